"""Interruption, determinism, bad checkpoints and safe loading, driven from the shell."""
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from checkpoints import CheckpointError, load_checkpoint
from conftest import ROOT, full_and_resumed_runs, on_cpu, run_script
from models import load_model


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_the_last_complete_checkpoint(image_folder, tmp_path, sig):
    out = tmp_path / "teacher.pt"
    # Output to a file, not a pipe: an undrained pipe would stall the child's progress bars.
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "train_teacher.py", *on_cpu([
                "--data-root", image_folder, "--out", out, "--plots-dir", tmp_path, "--epochs",
                "200", "--batch-size", "8"])],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.time() + 300
            while not out.exists() and time.time() < deadline and proc.poll() is None:
                time.sleep(0.1)
            time.sleep(0.3)  # into the next epoch
            proc.send_signal(sig)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:  # never leave a 200-epoch run behind
                proc.kill()
    stderr = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    ckpt = load_checkpoint(out)
    assert 1 <= ckpt["epoch"] < 200 and len(ckpt["history"]) == ckpt["epoch"]
    metrics = pd.read_csv(tmp_path / "teacher.metrics.csv")
    assert len(metrics) == ckpt["epoch"]  # the records agree with the checkpoint
    assert not list(tmp_path.glob("*.tmp"))


def test_resume_after_a_real_interrupt_matches_an_uninterrupted_run(image_folder, tmp_path):
    flags = ["--loss", "ce", "--epochs", "4", "--batch-size", "8", "--data-root", image_folder,
             "--plots-dir", tmp_path]
    full, cut = full_and_resumed_runs("train_student.py", flags, tmp_path, epochs=4)
    full, cut = load_model(full).state_dict(), load_model(cut).state_dict()
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_same_command_same_numbers(image_folder, tmp_path):
    outs = [tmp_path / f"run{i}" / "student.pt" for i in range(2)]
    for out in outs:
        run_script("train_student.py", "--loss", "ce", "--epochs", "2", "--data-root",
                   image_folder, "--out", out, "--plots-dir", out.parent)
    a, b = (pd.read_csv(out.parent / "student.metrics.csv") for out in outs)
    timeless = [c for c in a.columns if c not in ("epoch_seconds", "images_per_second")]
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


@pytest.mark.parametrize("flags, fragment", [
    (["--out", "{tmp}"], "is a folder"),
    (["--train-subset", "1"], "at least 2 images"),
    (["--out", "/proc/no/teacher.pt"], "--out: cannot create"),
    (["--plots-dir", "/proc/no"], "--plots-dir: cannot create"),
])
def test_more_bad_input(image_folder, tmp_path, flags, fragment):
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    args = ["--data-root", image_folder, "--dry-run"]
    args += [] if "--out" in flags else ["--out", tmp_path / "t.pt"]
    args += [] if "--plots-dir" in flags else ["--plots-dir", tmp_path]
    assert fragment in last_line(run_script("train_teacher.py", *args, *flags, check=False))


def test_nothing_unpickles_arbitrary_objects():
    """Every torch.load in the repo passes weights_only=True; nothing calls pickle.load."""
    for path in ROOT.glob("*.py"):
        source = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", source):
            assert "weights_only=True" in call, f"{path.name}: {call}"
        assert "pickle.load" not in source, path.name
