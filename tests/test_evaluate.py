"""evaluate.py on the checkpoints of a --dry-run pipeline: its table agrees with an
independent count of correct predictions, and its files are written."""
import re
import shutil
import subprocess

import pandas as pd
import pytest
import torch

import evaluate
from conftest import ROOT, run_in_process, run_script, synthetic_images, write_image_folder
from kd.checkpoints import load_checkpoint, save_checkpoint, weights_sha256
from kd.data import CLASSES, load_cifar10, split_train_val
from kd.device import machine_name
from models import load_model

N_TEST_PER_CLASS = 5  # the image_folder fixture's test split


@pytest.fixture(scope="module")
def pipeline(teacher_checkpoint, image_folder, tmp_path_factory):
    """teacher -> two seeds of a KD student -> a mean-teacher run, all --dry-run, in one
    folder; every run keeps an EMA (the default). The runs train in this process; evaluate.py
    runs from the shell."""
    folder = tmp_path_factory.mktemp("pipeline")
    teacher = folder / "teacher.pt"
    shutil.copy(teacher_checkpoint, teacher)
    common = ["--dry-run", "--batch-size", "64", "--data-root", image_folder, "--plots-dir",
              folder]
    for seed in (0, 1):
        run_in_process("train_student.py", *common, "--teacher", teacher, "--seed", seed,
                       "--out", folder / f"student_kd+ce_seed{seed}.pt")
    run_in_process("train_ema.py", *common, "--out", folder / "ema_mean-teacher_seed0.pt")
    proc = run_script("evaluate.py", *sorted(folder.glob("*.pt")), "--data-root", image_folder,
                      "--plots-dir", folder / "plots", "--batch-size", "16")
    return folder, proc


def correct_per_class(model):
    """Correct predictions per class on the test images, counted without this repo's data
    loading or evaluation code (the fixture's PNGs are lossless copies of these)."""
    images, labels = synthetic_images(N_TEST_PER_CLASS, seed=1)
    with torch.no_grad():
        predictions = model(images.float() / 255).argmax(1)
    return torch.bincount(labels[predictions == labels], minlength=len(CLASSES))


def accuracy(model, images, labels):
    """% of `images` that `model` classifies right, in one forward pass (no batching)."""
    with torch.no_grad():
        return 100 * (model(images.float() / 255).argmax(1) == labels).float().mean().item()


def test_results_agree_with_an_independent_count(pipeline, image_folder):
    folder, _ = pipeline
    results = pd.read_csv(folder / "plots" / "results.csv")
    assert {"checkpoint", "weights", "model", "train_acc", "test_loss", "test_acc", "params",
            "macs"} <= set(results.columns)
    train = split_train_val(load_cifar10(image_folder))[0]  # the images the runs trained on
    # Every run gives two rows: its model and its EMA.
    assert len(results) == 8 and sorted(results["weights"]) == ["ema"] * 4 + ["raw"] * 4
    for row in results.itertuples():
        model = load_model(row.checkpoint, ema=row.weights == "ema")
        correct = correct_per_class(model)
        assert row.test_acc == pytest.approx(100 * correct.sum().item() / (10 * N_TEST_PER_CLASS))
        per_class = [getattr(row, f"acc_{name}") for name in CLASSES]
        assert per_class == pytest.approx((100 * correct / N_TEST_PER_CLASS).tolist())
        assert row.params == sum(p.numel() for p in model.parameters())
        assert row.train_acc == pytest.approx(accuracy(model, *train))
    macs = results.groupby("model")["macs"].first()
    assert macs["teacher"] > 10 * macs["student"]
    assert (results["latency_ms"] > 0).all() and (results["images_per_s"] > 0).all()


def test_val_acc_is_counted_on_the_validation_split_not_the_test_set(pipeline, image_folder):
    """val_acc picks the best run (and the confusion matrix shown) without looking at test:
    it must be measured on the images held out of training, never on the test images.
    Guards against evaluate_all measuring val_acc on the test loader."""
    folder, _ = pipeline
    results = pd.read_csv(folder / "plots" / "results.csv")
    val = split_train_val(load_cifar10(image_folder))[1]
    told_apart = False
    for row in results.itertuples():
        model = load_model(row.checkpoint, ema=row.weights == "ema")
        on_val = accuracy(model, *val)
        assert row.val_acc == pytest.approx(on_val)
        told_apart |= on_val != pytest.approx(row.test_acc)
    assert told_apart  # some model scores otherwise on test: the test can tell the splits apart


def test_tables_and_figures_are_written(pipeline):
    folder, proc = pipeline
    plots = folder / "plots"
    markdown = (plots / "results.md").read_text()
    # Two seeds of kd+ce: a mean ± std row, of the training and the test accuracy.
    assert re.search(r"\| kd\+ce .*\|\s+2 \|\s+[\d.]+ ± [\d.]+ \|\s+[\d.]+ ± [\d.]+ \|$",
                     markdown, re.M)
    assert "mean-teacher teacher" in markdown and "teacher EMA" in markdown
    assert "mean-teacher EMA" not in markdown  # its second model is its teacher
    # latency is this machine's, not the "trained on" machine's of the rows: named
    assert f"CPU ({machine_name(torch.device('cpu'))}, torch {torch.__version__}, " in markdown
    assert "student_kd+ce_seed1" in proc.stdout
    names = {p.name for p in plots.glob("*.png")}
    assert "confusion_teacher.png" in names and "per_class_accuracy.png" in names
    assert len([n for n in names if n.startswith("confusion_")]) == 2  # teacher + best student


def test_every_row_says_where_its_run_came_from(pipeline):
    folder, _ = pipeline
    results = pd.read_csv(folder / "plots" / "results.csv", dtype=str).set_index("checkpoint")
    for checkpoint, row in results.iterrows():
        config = load_checkpoint(checkpoint)["config"]
        assert row["data_sha256"] == config["data_identity"]["sha256"][:12]
        assert row["train_images"] == "all"  # the fixture's runs train on every image
        assert row["precision"] == config["precision"] and row["torch"] == torch.__version__
        assert row["machine"] == config["machine"] and "bf16 units: " in row["machine"]


def test_every_row_gives_the_most_memory_its_run_held(pipeline):
    """The highest of the peaks its epochs recorded: a leak shows in the table."""
    folder, _ = pipeline
    results = pd.read_csv(folder / "plots" / "results.csv").set_index("checkpoint")
    for checkpoint, peak in results["peak_memory_mb"].items():
        history = load_checkpoint(checkpoint)["history"]
        assert peak == pytest.approx(max(row["peak_memory_mb"] for row in history))


def test_every_row_names_the_commit_its_run_was_trained_at(pipeline):
    """The runs trained in this checkout: each records a commit of this repository, and its
    row shows it, marked when tracked files had changed. Unconditional here, so that a run
    recording no commit (git_commit() failing quietly) cannot pass unseen. Mutation seen
    failing: engine.fit recording (None, None) for the commit."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True)
    if head.returncode != 0 or not head.stdout.strip():
        pytest.skip("not run inside a git checkout: its runs record no commit")
    folder, _ = pipeline
    results = pd.read_csv(folder / "plots" / "results.csv", dtype=str).set_index("checkpoint")
    for checkpoint, row in results.iterrows():
        config = load_checkpoint(checkpoint)["config"]
        commit = config["git_commit"]
        assert re.fullmatch(r"[0-9a-f]{40}", commit or ""), (checkpoint, commit)
        # a commit of this repository (HEAD may have moved on since the fixture trained)
        assert subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"],
                              cwd=ROOT).returncode == 0, commit
        assert isinstance(config["git_dirty"], bool)
        assert row["commit"] == commit[:10] + "+changes" * config["git_dirty"]


def test_every_student_row_names_its_teacher_and_the_tables_show_train_acc(
        pipeline, teacher_checkpoint):
    folder, _ = pipeline
    results = pd.read_csv(folder / "plots" / "results.csv")
    students = results["checkpoint"].str.contains("student_")
    sha = weights_sha256(load_checkpoint(teacher_checkpoint)["model_state"])[:12]
    assert (results.loc[students, "teacher_sha256"] == sha).all()
    assert (results.loc[students, "teacher_seed"] == 0).all()  # both seeds: the seed-0 teacher
    assert results.loc[~students, ["teacher_seed", "teacher_sha256"]].isna().all().all()
    per_variant, every_model = (folder / "plots" / "results.md").read_text().split("## Every")
    for table in (per_variant, every_model):  # beside the test accuracy in both tables
        assert re.search(r"\|\s+train_acc\s+\|(.*\|)?\s+test_acc\s+\|", table)


def test_a_subset_run_is_measured_on_its_images_and_an_old_record_still_evaluates(
        pipeline, teacher_checkpoint, image_folder, tmp_path):
    """--train-subset N: train_acc over the first N training images, the ones it trained on;
    a student recorded before teachers' seeds were: its teacher by its weights alone."""
    folder, _ = pipeline
    ckpt = load_checkpoint(teacher_checkpoint)
    ckpt["config"]["train_subset"] = 50
    save_checkpoint(ckpt, tmp_path / "subset.pt")
    old = load_checkpoint(folder / "student_kd+ce_seed0.pt")
    for field in ("seed", "recipe_sha256"):
        del old["config"]["teacher_identity"][field]
    save_checkpoint(old, tmp_path / "old.pt")
    run_script("evaluate.py", tmp_path / "subset.pt", tmp_path / "old.pt", "--data-root",
               image_folder, "--plots-dir", tmp_path)
    results = pd.read_csv(tmp_path / "results.csv").set_index(["checkpoint", "weights"])
    images, labels = split_train_val(load_cifar10(image_folder), 50)[0]
    assert len(labels) == 50
    model = load_model(tmp_path / "subset.pt")
    assert results.at[(str(tmp_path / "subset.pt"), "raw"), "train_acc"] == pytest.approx(
        accuracy(model, images, labels))
    row = results.loc[(str(tmp_path / "old.pt"), "raw")]
    assert pd.isna(row["teacher_seed"])
    assert row["teacher_sha256"] == old["config"]["teacher_identity"]["sha256"][:12]


def test_a_checkpoint_named_twice_is_evaluated_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.pt").write_bytes(b"")
    (tmp_path / "b.pt").write_bytes(b"")
    (tmp_path / "link.pt").symlink_to(tmp_path / "a.pt")
    (tmp_path / "hard.pt").hardlink_to(tmp_path / "b.pt")
    assert evaluate.checkpoint_paths(["a.pt", "b.pt", "./a.pt", "link.pt", str(tmp_path / "a.pt"),
                                      "hard.pt", "missing.pt", "./missing.pt"]
                                     ) == ["a.pt", "b.pt", "missing.pt"]


def test_no_checkpoint_named_evaluates_checkpoints_folder_and_says_so(tmp_path, monkeypatch,
                                                                      capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    for name in ("b.pt", "a.pt"):
        (tmp_path / "checkpoints" / name).write_bytes(b"")
    assert evaluate.checkpoint_paths([]) == ["checkpoints/a.pt", "checkpoints/b.pt"]
    assert capsys.readouterr().err == "no checkpoints named: evaluating the 2 in checkpoints/\n"


def test_a_plots_dir_that_cannot_be_made_is_refused_before_any_work(tmp_path):
    """It was refused only after every model was evaluated, with an errno line and exit
    status 1; now with the training scripts' check and words, before anything is read."""
    proc = run_script("evaluate.py", tmp_path / "missing.pt", "--plots-dir", "/proc/no",
                      check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --plots-dir: cannot create /proc/no (No such file or directory)"], proc.stderr


def test_bad_input_is_one_line(image_folder, tmp_path):
    for flags, fragment in (([tmp_path / "missing.pt"], "not found"),
                            ([tmp_path / "missing.pt", "--batch-size", "0"], "--batch-size")):
        proc = run_script("evaluate.py", *flags, "--data-root", image_folder, "--plots-dir",
                          tmp_path, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and fragment in lines[0]


def test_checkpoints_can_be_listed_in_a_file_one_per_line(image_folder, tmp_path):
    """`make best` handed evaluate.py the sweep's checkpoints through an unquoted shell
    variable: a folder with a space became two paths. @FILE reads one path per line."""
    listed = tmp_path / "checkpoints.txt"
    listed.write_text(f"{tmp_path / 'my runs' / 'missing.pt'}\n")
    proc = run_script("evaluate.py", f"@{listed}", "--data-root", image_folder, "--plots-dir",
                      tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: checkpoint not found: {tmp_path / 'my runs' / 'missing.pt'}"], proc.stderr


def test_a_bare_checkpoint_is_evaluated_as_its_model(teacher_checkpoint, image_folder, tmp_path):
    """A checkpoint with only its model and weights (which load_model accepts) gets a row."""
    ckpt = load_checkpoint(teacher_checkpoint)
    bare = tmp_path / "bare.pt"
    save_checkpoint({"model": ckpt["model"], "model_state": ckpt["model_state"]}, bare)
    run_script("evaluate.py", bare, "--data-root", image_folder, "--plots-dir", tmp_path)
    results = pd.read_csv(tmp_path / "results.csv")
    assert list(results["variant"]) == ["teacher"] and results["seed"].isna().all()


def test_an_unfinished_run_is_labelled_apart_from_the_finished_runs_of_its_recipe(
        teacher_checkpoint, image_folder, tmp_path):
    """A run stopped before its last epoch shared its finished seeds' label, so report.py
    pooled it into their mean ± std and paired tests (and its length into the length
    study); now its label says it is unfinished and how far it got."""
    ckpt = load_checkpoint(teacher_checkpoint)
    save_checkpoint(ckpt, tmp_path / "finished.pt")
    save_checkpoint({**ckpt, "epoch": ckpt["epochs"] - 1}, tmp_path / "unfinished.pt")
    proc = run_script("evaluate.py", tmp_path / "finished.pt", tmp_path / "unfinished.pt",
                      "--data-root", image_folder, "--plots-dir", tmp_path)
    results = pd.read_csv(tmp_path / "results.csv").set_index(["checkpoint", "weights"])
    stopped = f"unfinished: epoch {ckpt['epochs'] - 1} of {ckpt['epochs']}"
    assert results.at[(str(tmp_path / "finished.pt"), "raw"), "variant"] == "teacher"
    assert results.at[(str(tmp_path / "unfinished.pt"), "raw"), "variant"] == \
        f"teacher ({stopped})"
    assert results.at[(str(tmp_path / "unfinished.pt"), "ema"), "variant"] == \
        f"teacher EMA ({stopped})"
    assert f"unfinished.pt: {stopped}, labelled apart" in proc.stdout


def test_predictions_say_which_test_images_each_model_got_right(pipeline, image_folder):
    folder, _ = pipeline
    results = pd.read_csv(folder / "plots" / "results.csv")
    predictions = pd.read_csv(folder / "plots" / "predictions.csv")
    assert list(predictions) == [f"{row.checkpoint} ({row.weights})"
                                 for row in results.itertuples()]
    data = load_cifar10(image_folder)  # the test images in the order evaluate.py reads them
    for row in results.itertuples():
        model = load_model(row.checkpoint, ema=row.weights == "ema")
        with torch.no_grad():
            correct = model(data["test_images"].float() / 255).argmax(1) == data["test_labels"]
        assert predictions[f"{row.checkpoint} ({row.weights})"].tolist() == correct.int().tolist()
        assert 100 * correct.float().mean().item() == pytest.approx(row.test_acc)


def test_a_run_is_not_measured_on_data_it_was_not_trained_on(teacher_checkpoint, tmp_path):
    """Other data (another copy, another order) gives another validation split: the run's own
    training images would score as validation. One line names the run and both data."""
    other = tmp_path / "other"
    write_image_folder(other, n_train=30, n_test=5, seed=7)
    proc = run_script("evaluate.py", teacher_checkpoint, "--data-root", other, "--plots-dir",
                      tmp_path, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr  # (and the decoding bars)
    assert str(teacher_checkpoint) in errors[0] and "trained on other data" in errors[0]
    assert not (tmp_path / "results.csv").exists()


def test_a_run_whose_validation_split_moved_is_not_measured(teacher_checkpoint, image_folder,
                                                             tmp_path):
    """The same images split another way (a torch whose randperm draws another permutation)
    would score the run's own training images as validation: refused in one line."""
    moved = tmp_path / "teacher.pt"
    ckpt = load_checkpoint(teacher_checkpoint)
    ckpt["config"]["data_identity"]["split_sha256"] = "0" * 64
    save_checkpoint(ckpt, moved)
    proc = run_script("evaluate.py", moved, "--data-root", image_folder, "--plots-dir",
                      tmp_path, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "trained on other data" in errors[0] and "validation split" in errors[0]
