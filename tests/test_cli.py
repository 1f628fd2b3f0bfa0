"""The scripts driven from the shell, as a user would."""
import json
import shutil

import pandas as pd
import pytest
import torch

from conftest import ROOT, run_script, write_image_folder
from kd import cli
from kd.checkpoints import load_checkpoint
from models import TeacherNet, load_model


def test_train_teacher_dry_run_writes_everything(image_folder, tmp_path):
    out, plots = tmp_path / "ck" / "teacher.pt", tmp_path / "plots"
    proc = run_script("train_teacher.py", "--dry-run", "--data-root", image_folder,
                      "--out", out, "--plots-dir", plots)
    assert "teacher epoch 1/1" in proc.stdout
    model = load_model(out)
    assert isinstance(model, TeacherNet)
    config = json.loads((tmp_path / "ck" / "teacher.config.json").read_text())
    assert config["dry_run"] and config["torch_version"] == str(torch.__version__)
    assert {"git_commit", "seed", "lr", "data_root"} <= set(config)
    metrics = pd.read_csv(tmp_path / "ck" / "teacher.metrics.csv")
    assert list(metrics.columns[:8]) == ["epoch", "train_loss", "train_acc", "val_loss",
                                         "val_acc", "lr", "epoch_seconds", "images_per_second"]
    assert len(metrics) == 1
    # the process's peak: above what importing torch alone holds, well below the machine
    assert 100 < metrics["peak_memory_mb"].iloc[0] < 64 * 1024
    test = json.loads((tmp_path / "ck" / "teacher.test.json").read_text())
    assert 0 <= test["test_acc"] <= 100 and test["test_images"] == 50  # 2 dry-run batches
    assert (plots / "teacher_curves.png").stat().st_size > 0
    assert (plots / "teachers_compare.png").stat().st_size > 0
    assert (plots / "samples.png").stat().st_size > 0


def test_checkpoint_loads_with_weights_only_on_cpu(teacher_checkpoint):
    ckpt = torch.load(teacher_checkpoint, map_location="cpu", weights_only=True)
    assert {"model", "model_state", "optimizer_state", "scheduler_state", "epoch", "rng",
            "config", "history"} <= set(ckpt)


def assert_one_line_error(proc, *fragments):
    """Exit 2, no traceback, and one "error:" line last (progress bars may come before it)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1
    for fragment in fragments:
        assert fragment in lines[-1]


def test_existing_checkpoint_is_never_overwritten_by_accident(teacher_checkpoint, image_folder,
                                                             tmp_path):
    out = tmp_path / "teacher.pt"
    shutil.copy(teacher_checkpoint, out)  # what the same command wrote before
    before = out.read_bytes()
    proc = run_script("train_teacher.py", "--dry-run", "--data-root", image_folder, "--out",
                      out, "--plots-dir", tmp_path, check=False)
    assert_one_line_error(proc, "exists", "--resume", "--overwrite")
    assert out.read_bytes() == before


@pytest.mark.parametrize("flags, fragment", [
    (["--lr", "-1"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--train-subset", "100000"], "--train-subset"),
    (["--resume"], "not found"),
    (["--widths", "8", "16"], "--widths"),
    (["--widths", "0", "8", "8", "8"], "--widths"),
    (["--seed", "1000000000000000"], "--seed"),  # the loader's seed * 100,003 overflowed
    (["--seed", "-1"], "--seed"),
    (["--out", "."], "is a folder"),
    (["--weight-decay", "nan"], "--weight-decay"),  # trained to NaN
    (["--weight-decay", "inf"], "--weight-decay"),
])
def test_bad_flags_get_one_line_errors(image_folder, tmp_path, flags, fragment):
    proc = run_script("train_teacher.py", "--data-root", image_folder, "--out",
                      tmp_path / "t.pt", "--plots-dir", tmp_path, *flags, check=False)
    assert_one_line_error(proc, fragment)
    assert not (tmp_path / "t.pt").exists()


def test_a_refused_command_makes_no_folder(image_folder, tmp_path):
    out = tmp_path / "new" / "sub" / "t.pt"
    proc = run_script("train_teacher.py", "--data-root", image_folder, "--out", out,
                      "--lr", "-1", check=False)
    assert_one_line_error(proc, "--lr")
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_asked_for_where_there_is_none(image_folder, tmp_path):
    proc = run_script("train_teacher.py", "--dry-run", "--device", "cuda", "--data-root",
                      image_folder, "--out", tmp_path / "t.pt", check=False)
    assert_one_line_error(proc, "CUDA")


def test_wrong_class_folders_from_the_shell(tmp_path):
    write_image_folder(tmp_path / "root", n_train=1, n_test=1)
    shutil.rmtree(tmp_path / "root" / "test" / "ship")
    proc = run_script("train_teacher.py", "--dry-run", "--data-root", tmp_path / "root",
                      "--out", tmp_path / "t.pt", check=False)
    assert_one_line_error(proc, "ship")


def test_resume_rejects_a_checkpoint_of_another_model(teacher_checkpoint, image_folder,
                                                     tmp_path):
    out = tmp_path / "teacher.pt"
    ckpt = load_checkpoint(teacher_checkpoint)
    ckpt["model"]["name"] = "student"
    torch.save(ckpt, out)
    proc = run_script("train_teacher.py", "--resume", "--data-root", image_folder, "--out",
                      out, "--plots-dir", tmp_path, check=False)
    assert_one_line_error(proc, "student")


def test_every_scripts_help_opens_with_its_docstrings_first_sentence():
    """Its first line ended mid-sentence ("... as jobs through")."""
    doc = "Run a grid (seeds x settings) as jobs\nthrough submitit: here. More.\n\nDetails."
    assert cli.summary(doc) == "Run a grid (seeds x settings) as jobs through submitit: here."
    scripts = [*ROOT.glob("*.py"), *ROOT.glob("experiments/*.py"), *ROOT.glob("benchmarks/*.py")]
    parsers = [p for p in scripts if "parser(__doc__)" in p.read_text()]
    assert len(parsers) >= 10
    for path in scripts:
        assert "ArgumentParser(" not in path.read_text(), path.name  # each through cli.parser
