"""Interruption, determinism, bad checkpoints and safe loading, driven from the shell."""
import ast
import errno
import fcntl
import io
import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from conftest import (
    ROOT,
    full_and_resumed_runs,
    interrupted_run,
    run_in_process,
    run_script,
    write_image_folder,
)
from kd import cli, engine, plotting
from kd.checkpoints import (
    CheckpointError,
    export_finished,
    load_checkpoint,
    save_atomically,
    save_checkpoint,
)
from kd.cli import UserError
from kd.records import replace_atomically, write_text
from kd.runs import teacher_identity
from models import load_model


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_keeps_the_last_complete_checkpoint(image_folder, tmp_path, sig):
    out = tmp_path / "teacher.pt"
    # 16 images in batches of 8: 2 steps an epoch; the signal comes mid-epoch 2, after step 3
    # (the loop's checks: 2 steps, epoch 1's end, step 3).
    proc = interrupted_run("train_teacher.py", ["--data-root", image_folder, "--out", out,
                                                "--plots-dir", tmp_path, "--epochs", "200",
                                                "--batch-size", "8", "--train-subset", "16"],
                           step=2 + 1 + 1, sig=sig)
    assert "Traceback" not in proc.stderr
    assert f"{out} holds the last complete epoch" in proc.stderr.splitlines()[-1]
    ckpt = load_checkpoint(out)
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 1
    metrics = pd.read_csv(tmp_path / "teacher.metrics.csv")
    assert len(metrics) == 1  # the records agree with the checkpoint
    assert not list(tmp_path.glob("*.tmp"))


# The scripts' own start, with the run's first drawing of its curves interrupted (a real
# SIGINT) and each later drawing doing THEN.
INTERRUPTED_DRAWING = """
import os, runpy, signal, sys
sys.path.insert(0, os.getcwd())
from kd import plotting
real, drawings = plotting.plot_curves, []
def plot_curves(*args, **kwargs):
    drawings.append(1)
    if len(drawings) == 1:
        os.kill(os.getpid(), signal.SIGINT)
    THEN
plotting.plot_curves = plot_curves
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def stopped_in_its_first_drawing(then, image_folder, folder):
    """train_student.py stopped as INTERRUPTED_DRAWING does, with `then`; its stderr lines."""
    proc = subprocess.run([sys.executable, "-c", INTERRUPTED_DRAWING.replace("THEN", then),
                           "train_student.py", "--loss", "ce", "--data-root", image_folder,
                           "--out", folder / "s.pt", "--plots-dir", folder, "--epochs", "200",
                           "--batch-size", "32", "--train-subset", "64", "--device", "cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert load_checkpoint(folder / "s.pt")["epoch"] == 1
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_an_interrupt_that_breaks_the_figure_still_ends_in_one_line(image_folder, tmp_path):
    """The figure is redrawn as a run stops; when that fails (here as when the interrupt
    lands in the import of matplotlib's compiled Agg renderer, which then cannot initialise
    again in the process), the stop still ends with its one line and exit status 130: a
    sweep's stopped job ended in a traceback, exit 1."""
    lines = stopped_in_its_first_drawing('raise ImportError("initialization failed")',
                                         image_folder, tmp_path)
    assert lines[-2:] == [
        f"note: {tmp_path / 's_curves.png'} was not redrawn (ImportError: initialization "
        f"failed)", f"interrupted: {tmp_path / 's.pt'} holds the last complete epoch; rerun "
        f"with --resume to continue"], lines[-2:]


def test_a_second_signal_of_the_stop_does_not_cut_the_figure_short(image_folder, tmp_path):
    """A terminal's Ctrl-C of a sweep reaches the run, and the sweep and its job pass it on:
    the signals after the first wait while the run draws its figure and says its line."""
    lines = stopped_in_its_first_drawing(
        "os.kill(os.getpid(), signal.SIGINT); return real(*args, **kwargs)", image_folder,
        tmp_path)
    assert lines[-1] == (f"interrupted: {tmp_path / 's.pt'} holds the last complete epoch; "
                         f"rerun with --resume to continue")
    assert Image.open(tmp_path / "s_curves.png").size[0] > 0


def test_a_drawing_imports_nothing_mid_run(tmp_path):
    """What a first drawing needs is imported with kd.plotting, at start-up, where an
    interrupt ends the script in one line: none of it is imported mid-run (see above)."""
    code = ("import sys; from kd import plotting; before = set(sys.modules); "
            "plotting.plot_curves([dict(epoch=1, train_loss=2.0, train_acc=10.0, val_loss=2.0, "
            "val_acc=10.0, lr=0.1)], sys.argv[1], 'run'); "
            "print(sorted(set(sys.modules) - before))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.png")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_a_resumed_run_stopped_in_its_first_new_epoch_names_its_checkpoint(image_folder,
                                                                          tmp_path):
    """The checkpoint it resumed is whole: the stop's line said none had been written."""
    out = tmp_path / "teacher.pt"
    flags = ["--data-root", image_folder, "--out", out, "--plots-dir", tmp_path,
             "--batch-size", "8", "--train-subset", "16"]
    run_script("train_teacher.py", *flags, "--epochs", "1")
    proc = interrupted_run("train_teacher.py", [*flags, "--resume", "--epochs", "200"], step=1)
    assert f"{out} holds the last complete epoch" in proc.stderr.splitlines()[-1]
    assert load_checkpoint(out)["epoch"] == 1


def test_interrupt_before_any_checkpoint_says_none_was_written(tmp_path):
    write_image_folder(tmp_path / "root", n_train=2, n_test=1)  # a new root: decoded afresh
    proc = interrupted_run("train_teacher.py", ["--data-root", tmp_path / "root", "--out",
                                                tmp_path / "t.pt", "--plots-dir", tmp_path],
                           step=1, sig="SIGINT", at="kd.data._decode_image_folder")
    assert "no checkpoint was written" in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "t.pt").exists()


def test_an_interrupt_of_a_script_that_trains_nothing_says_no_more(teacher_checkpoint,
                                                                     image_folder, tmp_path):
    """evaluate.py writes no checkpoint: its stop does not talk of one."""
    proc = interrupted_run("evaluate.py", [teacher_checkpoint, "--data-root", image_folder,
                                           "--plots-dir", tmp_path], step=1, sig="SIGINT",
                           at="kd.engine.evaluate")
    assert proc.stderr.splitlines()[-1] == "interrupted"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["evaluate.py", "report.py"])
def test_a_ctrl_c_that_a_finalizer_swallowed_still_stops_a_script_that_trains_nothing(
        script, teacher_checkpoint, image_folder, tmp_path):
    """Python drops the KeyboardInterrupt of a signal that lands in a finalizer; the noted
    interrupt still stops evaluate.py before its next model, and any script before it says
    it is done."""
    if script == "evaluate.py":
        flags, at = [teacher_checkpoint, "--data-root", image_folder], "kd.engine.evaluate"
    else:
        run_script("evaluate.py", teacher_checkpoint, "--data-root", image_folder,
                   "--plots-dir", tmp_path)
        flags, at = [], "kd.results.markdown"
    proc = interrupted_run(script, [*flags, "--plots-dir", tmp_path], step=1, sig="SIGINT",
                           at=f"lost:{at}")
    assert "Exception ignored" in proc.stderr  # the signal's exception was indeed lost
    assert proc.stderr.splitlines()[-1] == "interrupted"
    if script == "evaluate.py":  # stopped after the teacher's raw weights, the first model
        assert not (tmp_path / "results.csv").exists()


def test_an_interrupt_while_the_first_checkpoint_is_written_says_it_was_kept(image_folder,
                                                                           tmp_path):
    """The write defers the signal until checkpoint and records agree; the message then
    names the checkpoint that was written, not "none was"."""
    out = tmp_path / "teacher.pt"
    proc = interrupted_run("train_teacher.py", ["--data-root", image_folder, "--out", out,
                                                "--plots-dir", tmp_path, "--epochs", "200",
                                                "--batch-size", "8", "--train-subset", "16"],
                           step=1, sig="SIGINT", at="kd.engine.save_checkpoint")
    assert f"{out} holds the last complete epoch" in proc.stderr.splitlines()[-1]
    assert load_checkpoint(out)["epoch"] == 1


def test_an_interrupt_after_the_last_epoch_says_the_run_is_complete(image_folder, tmp_path):
    """A stop as the finished run is tested: its checkpoint holds every epoch, so the line
    says so instead of "to continue", and the rerun it advises writes the test record."""
    out = tmp_path / "teacher.pt"
    flags = ["--data-root", image_folder, "--out", out, "--plots-dir", tmp_path, "--epochs",
             "1", "--batch-size", "8", "--train-subset", "16"]
    proc = interrupted_run("train_teacher.py", flags, step=1, sig="SIGINT",
                           at="kd.engine.test_and_record")
    assert proc.stderr.splitlines()[-1] == (
        f"interrupted: {out} is complete (1 of 1 epochs); rerun with --resume to write its "
        f"test record")
    assert not (tmp_path / "teacher.test.json").exists()
    run_script("train_teacher.py", *flags, "--resume")
    assert (tmp_path / "teacher.test.json").exists()


def test_an_interrupt_after_the_test_record_leaves_nothing_to_do(image_folder, tmp_path):
    """A stop once the run is tested (a Ctrl-C whose exception a finalizer dropped, raised
    as the script ends) advises nothing."""
    out = tmp_path / "teacher.pt"
    proc = interrupted_run("train_teacher.py", [
        "--data-root", image_folder, "--out", out, "--plots-dir", tmp_path, "--epochs", "1",
        "--batch-size", "8", "--train-subset", "16"], step=1, sig="SIGINT",
        at="kd.cli.check_interrupt")
    assert proc.stderr.splitlines()[-1] == f"interrupted: {out} is complete (1 of 1 epochs)"
    assert (tmp_path / "teacher.test.json").exists()


def test_resume_after_a_real_interrupt_matches_an_uninterrupted_run(image_folder, tmp_path):
    flags = ["--loss", "ce", "--epochs", "4", "--batch-size", "8", "--train-subset", "32",
             "--data-root", image_folder, "--plots-dir", tmp_path]
    full, cut = full_and_resumed_runs("train_student.py", flags, tmp_path, epochs=4,
                                      step=4 + 1 + 2)  # mid-epoch 2: after its 2nd step
    full, cut = load_model(full).state_dict(), load_model(cut).state_dict()
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_same_command_same_numbers(image_folder, tmp_path):
    outs = [tmp_path / f"run{i}" / "student.pt" for i in range(2)]
    for out in outs:
        run_script("train_student.py", "--loss", "ce", "--epochs", "2", "--data-root",
                   image_folder, "--out", out, "--plots-dir", out.parent)
    a, b = (pd.read_csv(out.parent / "student.metrics.csv") for out in outs)
    # what the process measures of itself, its time and its memory, differs run to run
    timeless = [c for c in a.columns
                if c not in ("epoch_seconds", "images_per_second", "peak_memory_mb")]
    pd.testing.assert_frame_equal(a[timeless], b[timeless], check_exact=True)
    wa, wb = (load_model(out).state_dict() for out in outs)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def last_line(proc):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_truncated_checkpoint(teacher_checkpoint, image_folder, tmp_path):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(teacher_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    proc = run_script("train_teacher.py", "--resume", "--data-root", image_folder, "--out", bad,
                      check=False)
    assert "not a readable checkpoint" in last_line(proc)
    proc = run_script("train_student.py", "--dry-run", "--teacher", bad, "--data-root",
                      image_folder, "--out", tmp_path / "s.pt", check=False)
    assert "not a readable checkpoint" in last_line(proc)


@pytest.mark.parametrize("content", [
    "epoch,train_loss,train_acc\n1,2.0,25.0\n",  # a run's metrics, caught by a glob
    "hello", '{"run_id": "x"}\n'])
def test_a_text_file_given_as_a_checkpoint_is_one_line(tmp_path, content):
    """torch's weights-only unpickler reads any bytes as pickle opcodes, and what they lead
    to raises IndexError or KeyError as well as its own errors."""
    path = tmp_path / "student.metrics.csv"
    path.write_text(content)
    with pytest.raises(CheckpointError, match=r"not a readable checkpoint \(not a file "
                                              r"torch.save wrote whole\)$"):
        load_checkpoint(path)  # not the unpickler's "101" or its advice to load unsafely
    proc = run_script("evaluate.py", path, "--plots-dir", tmp_path, check=False)
    assert "not a readable checkpoint" in last_line(proc)
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_that_cannot_be_read_says_why(teacher_checkpoint, monkeypatch):
    """A read error is the file's, not its contents': said as the system says it."""
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(CheckpointError, match=r"^cannot read the checkpoint .*teacher.pt "
                                              r"\(Permission denied\)$"):
        load_checkpoint(teacher_checkpoint)


def test_a_checkpoint_holding_an_object_the_safe_loader_refuses_names_it(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save({"format": 1, "when": Path("x")}, path)
    with pytest.raises(CheckpointError, match=r"not a readable checkpoint \(.*Unsupported "
                                              r"global: GLOBAL pathlib"):
        load_checkpoint(path)


def test_checkpoint_of_another_architecture(teacher_checkpoint, image_folder, tmp_path):
    ckpt = load_checkpoint(teacher_checkpoint)
    ckpt["model"]["arch_args"] = {"widths": [8, 16, 32, 64]}  # not the widths of its weights
    odd = tmp_path / "odd.pt"
    torch.save(ckpt, odd)
    proc = run_script("train_student.py", "--dry-run", "--teacher", odd, "--data-root",
                      image_folder, "--out", tmp_path / "s.pt", check=False)
    assert "do not fit its architecture" in last_line(proc)


def test_a_checkpoint_without_training_state_cannot_be_resumed(teacher_checkpoint, image_folder,
                                                               tmp_path):
    ckpt = load_checkpoint(teacher_checkpoint)
    del ckpt["optimizer_state"]
    out = tmp_path / "teacher.pt"
    torch.save(ckpt, out)
    proc = run_script("train_teacher.py", "--resume", "--data-root", image_folder, "--out", out,
                      check=False)
    assert "optimizer_state" in last_line(proc)


def test_a_finished_run_exported_without_its_training_state_is_the_same_teacher(
        teacher_checkpoint, image_folder, tmp_path):
    """What comes back from a lent GPU: a teacher without optimizer, schedule and RNG states,
    a third of the size, that students and evaluate.py take as the run itself."""
    out = tmp_path / "exported.pt"
    export_finished(teacher_checkpoint, out)
    original, exported = load_checkpoint(teacher_checkpoint), load_checkpoint(out)
    assert set(original) - set(exported) == {"optimizer_state", "scheduler_state", "rng"}
    assert out.stat().st_size < 0.8 * teacher_checkpoint.stat().st_size
    data = {"sha256": original["config"]["data_identity"]["sha256"]}
    assert teacher_identity(out, data) == teacher_identity(teacher_checkpoint, data)
    for model in ("raw", "ema"):
        expected, got = (load_model(path, ema=model == "ema").state_dict()
                         for path in (teacher_checkpoint, out))
        assert all(torch.equal(expected[k], got[k]) for k in expected)
    proc = run_script("train_student.py", "--dry-run", "--loss", "kd", "--teacher", out,
                      "--data-root", image_folder, "--out", tmp_path / "student.pt",
                      "--plots-dir", tmp_path)
    assert "test loss" in proc.stdout
    results = {}
    for path in (teacher_checkpoint, out):
        run_script("evaluate.py", path, "--data-root", image_folder, "--plots-dir",
                   tmp_path / path.stem)
        table = pd.read_csv(tmp_path / path.stem / "results.csv")
        results[path] = table.filter(regex="acc|loss|variant|seed|epochs")
    pd.testing.assert_frame_equal(*results.values())
    # make resumes every checkpoint it finds: an export of the same recipe is complete, its
    # test record written, its weights untouched; extending it is refused in one line
    weights = out.read_bytes()
    done = run_script("train_teacher.py", "--resume", "--restart-if-changed", "--dry-run",
                      "--data-root", image_folder, "--out", out, "--plots-dir", tmp_path)
    assert "is already complete (1 epoch); exported without its training state" in done.stdout
    assert "stale" not in done.stdout and out.read_bytes() == weights
    assert (tmp_path / "exported.test.json").exists()
    # (of a real run: a dry run is one epoch, whatever --epochs says)
    real = load_checkpoint(out)
    real["config"]["dry_run"] = False
    save_checkpoint(real, tmp_path / "real.pt")
    weights = (tmp_path / "real.pt").read_bytes()
    refused = run_script("train_teacher.py", "--resume", "--epochs", "2", "--data-root",
                         image_folder, "--out", tmp_path / "real.pt", "--plots-dir", tmp_path,
                         check=False)
    assert last_line(refused).endswith("exported without its training state: it serves as "
                                       "--teacher and for evaluate.py, and cannot be extended")
    assert (tmp_path / "real.pt").read_bytes() == weights
    unfinished = {**original, "epoch": original["epochs"] - 1}
    torch.save(unfinished, tmp_path / "unfinished.pt")
    with pytest.raises(CheckpointError, match="unfinished run"):
        export_finished(tmp_path / "unfinished.pt", tmp_path / "no.pt")


@pytest.mark.parametrize("flags, fragment", [
    (["--out", "{tmp}"], "is a folder"),
    (["--out", "{tmp}/link.pt"], "is a symbolic link to"),
    (["--train-subset", "1"], "at least 2 images"),
    (["--out", "/proc/no/teacher.pt"], "--out: cannot create"),
    (["--plots-dir", "/proc/no"], "--plots-dir: cannot create"),
])
def test_more_bad_input(image_folder, tmp_path, flags, fragment):
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    # A link's run would lock <link>.lock and one given its target <target>.lock, and the
    # first save replaces the link by a file.
    (tmp_path / "link.pt").symlink_to(tmp_path / "target.pt")
    args = ["--data-root", image_folder, "--dry-run"]
    args += [] if "--out" in flags else ["--out", tmp_path / "t.pt"]
    args += [] if "--plots-dir" in flags else ["--plots-dir", tmp_path]
    assert fragment in last_line(run_script("train_teacher.py", *args, *flags, check=False))
    assert (tmp_path / "link.pt").is_symlink()


def repo_sources():
    """Every .py file of the repo (scripts, kd/, experiments/, benchmarks/, tests/), without
    hidden folders (.venv, .cache) or the ignored data and output folders."""
    skip = {"__pycache__", "data", "checkpoints", "plots", "runs", "logs"}
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d not in skip)
        yield from (Path(folder) / f for f in sorted(files) if f.endswith(".py"))


def test_nothing_unpickles_arbitrary_objects():
    """Every torch.load in the repo (the checkpoints', the data cache's and the stored teacher
    logits' are in kd/) passes weights_only=True, and nothing calls pickle.load or
    pickle.loads: read from the code's syntax tree, so a call over several lines or with
    brackets in its arguments is read whole. Guards against weights_only=False in
    kd/checkpoints.py."""
    loads = []
    for path in repo_sources():
        name = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), filename=name)):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name)):
                continue
            call = (node.func.value.id, node.func.attr)
            assert call not in (("pickle", "load"), ("pickle", "loads")), \
                f"{name}:{node.lineno}"
            if call == ("torch", "load"):
                loads.append(name)
                weights_only = [k.value for k in node.keywords if k.arg == "weights_only"]
                assert len(weights_only) == 1 and isinstance(weights_only[0], ast.Constant) \
                    and weights_only[0].value is True, f"{name}:{node.lineno}"
    # not vacuous: the scan reached the package's loads
    assert {"kd/checkpoints.py", "kd/data.py", "kd/teacher_logits.py"} <= set(loads), loads


def test_a_bad_arch_args_or_training_state_cannot_be_resumed_but_says_so(teacher_checkpoint,
                                                                        image_folder, tmp_path):
    flags = ["--resume", "--data-root", image_folder, "--plots-dir", tmp_path]
    ckpt = load_checkpoint(teacher_checkpoint)
    ckpt["model"]["arch_args"] = {"depth": 3}  # no such argument
    odd = tmp_path / "odd.pt"
    torch.save(ckpt, odd)
    assert "do not fit its architecture" in last_line(
        run_script("train_teacher.py", *flags, "--out", odd, check=False))
    ckpt = load_checkpoint(teacher_checkpoint)
    ckpt["optimizer_state"] = {"state": {}, "param_groups": []}  # fits no optimizer
    torch.save(ckpt, odd)
    assert "training state does not fit" in last_line(
        run_script("train_teacher.py", *flags, "--out", odd, "--epochs", "2", check=False))


def test_a_failed_checkpoint_write_is_one_error_and_leaves_no_temporary_file(tmp_path,
                                                                            monkeypatch):
    def full_disk(obj, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="cannot write checkpoint .*c.pt"):
        save_checkpoint({"epoch": 1}, tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_only_a_run_of_the_same_model(teacher_checkpoint, image_folder,
                                                         tmp_path):
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(teacher_checkpoint.read_bytes())
    before = teacher.read_bytes()
    common = ["--dry-run", "--overwrite", "--data-root", image_folder, "--plots-dir", tmp_path]
    # the very file the student is to learn from
    line = last_line(run_script("train_student.py", *common, "--teacher", teacher, "--out",
                                teacher, check=False))
    assert "is the --teacher file" in line
    # a run of the other model
    line = last_line(run_script("train_student.py", *common, "--loss", "ce", "--out", teacher,
                                check=False))
    assert "holds a teacher run" in line
    assert teacher.read_bytes() == before
    # a file that is no checkpoint at all
    notes = tmp_path / "notes.pt"
    notes.write_text("my notes")
    line = last_line(run_script("train_teacher.py", *common, "--out", notes, check=False))
    assert "not a checkpoint of this project" in line and notes.read_text() == "my notes"


def save_figure(marker, path):
    """A figure whose background's red is 50 times the marker."""
    fig = plt.figure(facecolor=(50 * marker / 255, 0, 0))
    fig.text(0.5, 0.5, "figure")
    plotting.save(fig, path)


# Each way the project replaces a file whole: (where its inner write is, how a writer stores
# its marker, how the marker is read back). One name shared by both writers' temporary files
# let B rename A's; a figure written in place was left half-written by a crash.
WRITERS = {
    "tensors": (lambda: (torch, "save"), lambda marker, path: save_atomically(
        {"writer": torch.tensor(marker)}, path),
        lambda path: int(torch.load(path, weights_only=True)["writer"])),
    "text": (lambda: (Path, "write_text"), lambda marker, path: write_text(path, str(marker)),
             lambda path: int(path.read_text())),
    "figure": (lambda: (Figure, "savefig"), save_figure,
               lambda path: round(Image.open(path).getpixel((0, 0))[0] / 50)),
}


@pytest.mark.parametrize("kind", WRITERS)
def test_two_processes_writing_one_file_at_once_each_replace_it_whole(tmp_path, monkeypatch,
                                                                        kind):
    # Parallel runs of one teacher (sweep.py on a cluster, several runs on one GPU) store the
    # same teacher-logit file, decoded-image cache and comparison figures: here writer B
    # writes the file whole while writer A is between its write and its rename.
    where, write, read = WRITERS[kind]
    owner, name = where()
    target, real, interleaved = tmp_path / "store.png", getattr(owner, name), []

    def write_then_let_b_in(*args, **kwargs):
        result = real(*args, **kwargs)
        if not interleaved:
            interleaved.append(True)
            write(2, target)
        return result
    monkeypatch.setattr(owner, name, write_then_let_b_in)
    write(1, target)
    monkeypatch.setattr(owner, name, real)
    assert read(target) == 1  # A's, whole, renamed last
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("kind", WRITERS)
def test_a_file_replaced_whole_gets_the_mode_the_umask_gives(tmp_path, kind):
    """As a plain open() would: a group sharing a project folder on a cluster reads the
    checkpoints, records and caches (mkstemp's 0600 kept them to their owner)."""
    where, write, read = WRITERS[kind]
    umask = os.umask(0o027)
    try:
        write(1, tmp_path / "store.png")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "store.png").stat().st_mode) == 0o640


def test_a_ctrl_c_anywhere_in_a_replacement_leaves_the_file_whole_and_nothing_else(tmp_path):
    """A Ctrl-C lands between two lines of Python: here, in turn, before each line that
    replacing a file runs (its own and the libraries' it calls). Each time the file is the
    old one or the new one whole, no temporary file is left, and the process's umask is as
    it was (a stop's last figure is written after the interrupt)."""
    target = tmp_path / "teacher.metrics.csv"
    write_text(target, "old")
    umask = os.umask(0o022)
    os.umask(umask)

    def interrupt_at(line):
        seen = 0

        def tracer(frame, event, arg):
            nonlocal seen
            if event == "line":
                seen += 1
                if seen == line:
                    raise KeyboardInterrupt  # Python unsets the tracer: one interrupt
            return tracer
        return tracer

    line = 0
    while True:
        line += 1
        sys.settrace(interrupt_at(line))
        try:
            write_text(target, "new")
        except KeyboardInterrupt:
            pass
        else:
            break  # past the last line: nothing left to interrupt
        finally:
            sys.settrace(None)
        assert [p.name for p in tmp_path.iterdir()] == [target.name], f"line {line}"
        assert target.read_text() in ("old", "new"), f"line {line}"
        current = os.umask(umask)
        assert current == umask, f"line {line}: umask {current:o}"
    assert line > 10 and target.read_text() == "new"


def test_a_failed_write_names_the_file_not_its_temporary_stand_in(tmp_path):
    def full_disk(tmp):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), tmp)
    with pytest.raises(OSError) as failed:
        replace_atomically(tmp_path / "teacher.metrics.csv", full_disk)
    assert str(failed.value) == (f"[Errno {errno.ENOSPC}] No space left on device: "
                                 f"'{tmp_path / 'teacher.metrics.csv'}'")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_names_the_file_even_where_the_error_names_none(tmp_path):
    def full_disk(tmp):  # as a write or flush fails on a full disk: no file name
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(OSError) as failed:
        replace_atomically(tmp_path / "teacher.metrics.csv", full_disk)
    assert str(tmp_path / "teacher.metrics.csv") in str(failed.value)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fds through /proc")
def test_a_write_is_on_disk_before_its_rename_and_the_rename_after_it(tmp_path, monkeypatch):
    """Atomic against a crash of the process only, before: a crash of the machine could
    leave the new name on a file whose data never reached the disk."""
    synced, fsync = [], os.fsync

    def recorded(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)
    monkeypatch.setattr(os, "fsync", recorded)
    write_text(tmp_path / "a.txt", "x")
    assert len(synced) == 2, synced
    assert re.fullmatch(rf"{tmp_path}/\.a\.txt\.\d+\.[0-9a-f]{{16}}\.tmp", synced[0])
    assert synced[1] == str(tmp_path)


def test_a_lock_file_no_one_may_open_is_one_line(image_folder, tmp_path, monkeypatch):
    """Another user's lock file, left with their umask 077: not even readable (root, which
    runs the suite, reads anything, so open() is made to refuse it)."""
    lock, real_open = tmp_path / "teacher.lock", open

    def refusing_open(path, *args, **kwargs):
        if Path(path) == lock:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr("builtins.open", refusing_open)
    with pytest.raises(UserError, match="the lock file another user left beside"):
        run_in_process("train_teacher.py", "--dry-run", "--data-root", image_folder,
                       "--plots-dir", tmp_path, "--out", tmp_path / "teacher.pt")


def test_the_records_of_a_finished_run_are_rewritten_as_its_checkpoint_recorded_them(
        image_folder, tmp_path):
    """A run from before a setting was recorded: --resume fills it in to compare recipes,
    but the rewritten config says what the run recorded."""
    out = tmp_path / "teacher.pt"
    flags = ["--dry-run", "--data-root", image_folder, "--plots-dir", tmp_path, "--out", out]
    run_in_process("train_teacher.py", *flags)
    ckpt = load_checkpoint(out)
    del ckpt["config"]["precision"], ckpt["config"]["clip_grad_norm"]
    save_checkpoint({k: v for k, v in ckpt.items() if k != "format"}, out)
    run_in_process("train_teacher.py", *flags, "--resume")
    config = json.loads((tmp_path / "teacher.config.json").read_text())
    assert "precision" not in config and "clip_grad_norm" not in config


def test_records_that_lag_their_finished_checkpoint_catch_up_on_resume(image_folder, tmp_path):
    """The last epoch's checkpoint written, its records not (a full disk): a --resume of
    the finished run rewrites them from the checkpoint."""
    out = tmp_path / "teacher.pt"
    flags = ["--data-root", image_folder, "--plots-dir", tmp_path, "--out", out,
             "--epochs", "2", "--train-subset", "16", "--batch-size", "8", "--skip-test"]
    run_in_process("train_teacher.py", *flags)
    metrics, config = tmp_path / "teacher.metrics.csv", tmp_path / "teacher.config.json"
    whole = metrics.read_text()
    metrics.write_text("\n".join(whole.splitlines()[:2]) + "\n")  # epoch 1 only
    config.unlink()
    run_in_process("train_teacher.py", *flags, "--resume")
    assert metrics.read_text() == whole
    assert json.loads(config.read_text())["run_id"] == load_checkpoint(out)["config"]["run_id"]


@pytest.mark.parametrize("kind", WRITERS)
def test_a_write_interrupted_midway_leaves_the_previous_file(tmp_path, monkeypatch, kind):
    where, write, read = WRITERS[kind]
    owner, name = where()
    target = tmp_path / "store.png"
    write(1, target)

    def write_half_then_interrupt(*args, **kwargs):
        path = next(a for a in args if isinstance(a, (str, Path)))
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(owner, name, write_half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        write(2, target)
    monkeypatch.undo()
    assert read(target) == 1
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("script", ["train_teacher.py", "train_student.py", "train_ema.py",
                                    "evaluate.py", "report.py", "sweep.py"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_ctrl_c_while_a_script_imports_is_one_line(script, sig):
    """The imports take seconds (torch, pandas): a Ctrl-C or SIGTERM among them is as quiet
    as one during a run (exit status 130), not a traceback from inside a library."""
    proc = interrupted_run(script, ["--help"], step=1, sig=sig, at="import:pandas")
    assert proc.stderr.strip().splitlines() == ["interrupted while starting: nothing was written"]
    assert proc.returncode == 130


@pytest.mark.parametrize("then", ["cli.run_cli(lambda: print('trained'))",
                                  "raise AttributeError('half imported')"])
def test_a_ctrl_c_while_starting_ends_the_process_even_where_a_library_catches_everything(
        then):
    """An import that catches BaseException swallowed the interrupt's SystemExit (seen: a
    Ctrl-C in the first second, then the run trained to the end, or a traceback from the
    module it left half imported): the script still ends there, exit status 130, one line."""
    code = (f"import os, signal, sys, time\nsys.path.insert(0, {str(ROOT)!r})\n"
            f"sys.modules['__main__'].__file__ = {str(ROOT / 'train_teacher.py')!r}\n"
            "import kd.startup\n"
            "try:  # a library's import that swallows every exception\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n    time.sleep(5)\n"
            "except BaseException:\n    pass\nfrom kd import cli\n" + then + "\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert proc.stderr.strip().splitlines() == ["interrupted while starting: nothing was written"]
    assert proc.returncode == 130 and "trained" not in proc.stdout


def read_a_line_then_stop(command):
    """`command | head -1`: the first line of stdout, then the reader goes."""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    first = proc.stdout.readline()
    proc.stdout.close()
    stderr = proc.stderr.read()
    proc.wait(timeout=120)
    return first, stderr, proc.returncode


@pytest.mark.parametrize("main", [
    "lambda: [print(i) for i in range(200_000)]",  # more than the pipe holds
    # the rest of the output written as the script ends
    "lambda: (print(0, flush=True), time.sleep(1), print(1))"])
def test_a_script_whose_reader_stops_early_ends_quietly(main):
    """`evaluate.py ... | head -1` said "error: [Errno 32] Broken pipe" on stderr, or Python's
    "Exception ignored ... BrokenPipeError" where the output was written at exit: quiet, as a
    shell tool is, exit status 1."""
    code = (f"import sys, time\nsys.path.insert(0, {str(ROOT)!r})\nfrom kd import cli\n"
            f"cli.run_cli({main}, trains=False)\n")
    first, stderr, returncode = read_a_line_then_stop([sys.executable, "-c", code])
    assert (first, stderr, returncode) == ("0\n", "", 1)


def test_a_script_without_stdout_or_with_another_one_still_ends_as_it_did(monkeypatch):
    """`script >&-` leaves Python no sys.stdout (print does nothing): the flush that
    catches a gone reader raised AttributeError there. A stdout without a file (a test
    harness's StringIO) is no pipe whose reader went."""
    code = (f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom kd import cli\n"
            "cli.run_cli(lambda: print('x'), trains=False)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=False,
                          stderr=subprocess.PIPE, text=True, timeout=60,
                          preexec_fn=lambda: os.close(1))
    assert (proc.returncode, proc.stderr) == (0, "")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert cli.reader_gone() is False


def test_a_sweep_listing_whose_reader_stops_early_ends_quietly(tmp_path):
    """`sweep.py GRID --list | head` ended in a traceback."""
    grid = tmp_path / "many.toml"
    grid.write_text(f'folder = "{tmp_path}"\n[[stage]]\nscript = "train_teacher.py"\n'
                    f"grid = {{epochs = {list(range(1, 3001))}}}\n")
    first, stderr, returncode = read_a_line_then_stop(
        [sys.executable, "sweep.py", str(grid), "--list"])
    assert first.startswith("teacher_epochs=1_seed0 train_teacher.py")
    assert (stderr, returncode) == ("", 1)


def test_a_run_started_over_drops_the_old_test_record_before_its_first_checkpoint(
        image_folder, tmp_path, monkeypatch):
    """A finished run trained again from the start (--overwrite, or --restart-if-changed on
    a stale one) whose records fail to write after its first checkpoint (a full disk) must
    not look finished: the old run's test record goes before the new checkpoint is written,
    else old config, metrics and test record beside an epoch-1 checkpoint read as done."""
    out = tmp_path / "t.pt"
    flags = ["--dry-run", "--data-root", image_folder, "--out", out, "--plots-dir", tmp_path]
    run_in_process("train_teacher.py", *flags)
    test_record = tmp_path / "t.test.json"
    assert test_record.exists()

    def full_disk(*_):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(engine, "write_records", full_disk)
    with pytest.raises(OSError):
        run_in_process("train_teacher.py", *flags, "--overwrite", "--seed", "1")
    assert not test_record.exists()


def test_a_run_another_process_is_training_is_refused_in_one_line(image_folder, tmp_path,
                                                                 monkeypatch):
    """Two sweeps with overlapping runs, or a run started twice: the second is refused before
    it writes anything, for as long as the first trains; then the run is free again."""
    out = tmp_path / "teacher.pt"
    flags = ["--data-root", image_folder, "--plots-dir", tmp_path, "--out", out]
    second = []

    def start_a_second_run_mid_epoch():  # the loop's check after each step and epoch
        if not second:
            second.append(run_script("train_teacher.py", *flags, "--dry-run", check=False))
    monkeypatch.setattr(engine, "check_interrupt", start_a_second_run_mid_epoch)
    run_in_process("train_teacher.py", *flags, "--epochs", "1", "--train-subset", "16",
                   "--batch-size", "8")
    monkeypatch.undo()
    assert second[0].returncode == 2
    assert second[0].stderr.strip().splitlines() == [
        f"error: {out} is being trained by another process (pid {os.getpid()} on "
        f"{socket.gethostname()}); wait for it to end, or give another --out"]
    assert load_checkpoint(out)["epoch"] == 1  # the first run's, untouched by the second
    assert not (tmp_path / "teacher.lock").exists()
    # A lock file left behind, as by a killed process, holds nothing.
    (tmp_path / "teacher.lock").write_text("pid 4242 on elsewhere\n")
    run_script("train_teacher.py", *flags, "--resume", "--epochs", "2", "--train-subset",
               "16", "--batch-size", "8")
    assert load_checkpoint(out)["epoch"] == 2


def test_a_run_refused_in_this_process_lets_its_lock_go(image_folder, tmp_path):
    """A script's main() called from Python (a test, a notebook) and refused (here: the
    checkpoint exists) leaves the run free for the next process."""
    out = tmp_path / "teacher.pt"
    flags = ["--dry-run", "--data-root", image_folder, "--plots-dir", tmp_path, "--out", out]
    run_script("train_teacher.py", *flags)
    with pytest.raises(UserError, match="exists"):
        run_in_process("train_teacher.py", *flags)
    run_script("train_teacher.py", *flags, "--overwrite")


def test_where_files_cannot_be_locked_a_run_goes_on_with_a_warning(image_folder, tmp_path,
                                                                   monkeypatch, capsys):
    def no_flock(*args):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))
    monkeypatch.setattr(fcntl, "flock", no_flock)  # Lustre mounted without flock
    out = tmp_path / "teacher.pt"
    run_in_process("train_teacher.py", "--dry-run", "--data-root", image_folder,
                   "--plots-dir", tmp_path, "--out", out)
    assert f"warning: cannot lock {tmp_path / 'teacher.lock'} (Function not implemented): " \
           f"nothing stops a second process from training {out} at the same time" \
           in capsys.readouterr().err
    assert load_checkpoint(out)["epoch"] == 1


def test_each_epoch_records_the_threads_it_ran_with(image_folder, tmp_path):
    out = tmp_path / "teacher.pt"
    flags = ["--data-root", image_folder, "--plots-dir", tmp_path, "--out", out,
             "--train-subset", "16", "--batch-size", "8", "--skip-test"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run_in_process("train_teacher.py", *flags, "--epochs", "1")
        torch.set_num_threads(2)
        run_in_process("train_teacher.py", *flags, "--epochs", "2", "--resume")
    finally:
        torch.set_num_threads(threads)
    assert pd.read_csv(tmp_path / "teacher.metrics.csv")["cpu_threads"].tolist() == [1, 2]


def test_a_cache_that_cannot_be_written_is_one_warning_and_the_run_goes_on(
        teacher_checkpoint, tmp_path, monkeypatch, capsys):
    """A full disk as the decoded images and the teacher's logits are stored: both are
    caches for later runs, so the run warns in one line each and finishes (the checkpoint's
    own write is the one a full disk must stop)."""
    data = tmp_path / "data"  # the teacher's images at a new path: decoded afresh
    write_image_folder(data, n_train=30, n_test=5)
    real_save = torch.save

    def full_disk_for_caches(obj, path, *args, **kwargs):
        if "teacher_logits" in str(path) or Path(path).name.startswith(".cifar10-"):
            real_save(obj, path, *args, **kwargs)  # part of it written, as a full disk does
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter "
                               "failed writing file data/0: file write failed")
        return real_save(obj, path, *args, **kwargs)
    monkeypatch.setattr(torch, "save", full_disk_for_caches)
    out = tmp_path / "student.pt"
    run_in_process("train_student.py", "--dry-run", "--loss", "kd", "--teacher",
                   teacher_checkpoint, "--data-root", data, "--out", out, "--plots-dir", tmp_path)
    warnings = [line for line in capsys.readouterr().err.splitlines()
                if line.startswith("warning: cannot store")]
    assert len(warnings) == 2
    assert "the decoded images" in warnings[0] and "the teacher's logits" in warnings[1]
    assert all(line.endswith("(PytorchStreamWriter failed writing file data/0: file write "
                             "failed); going on without it") for line in warnings)
    assert load_checkpoint(out)["epoch"] == 1
    assert not list((tmp_path / "teacher_logits").iterdir())  # no partial store left
