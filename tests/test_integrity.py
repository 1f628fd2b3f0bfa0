"""Every result knows where it came from: a student records its teacher and data, a changed
teacher or data stops a resume (or, as make does, restarts the run), and test records
always describe the checkpoint beside them."""
import json
import shutil

import pytest
import torch

import train_student

from conftest import run_in_process, run_script, write_image_folder
from kd import runs
from kd.checkpoints import load_checkpoint, save_checkpoint, weights_sha256
from kd.cli import UserError
from kd.device import resolve_precision
from kd.records import record_paths
from kd.results import recipe, recipe_sha256
from kd.runs import stale_reasons


def test_run_records_of_two_outs_without_pt_never_collide():
    """Records were named after the out without its last suffix: --out teacher_lr0.05 and
    --out teacher_lr0.1 shared teacher_lr0.config.json, metrics and lock."""
    assert record_paths("runs/teacher.pt")["config"].name == "teacher.config.json"
    names = [set(p.name for p in record_paths(f"runs/teacher_lr{lr}").values())
             for lr in ("0.05", "0.1")]
    assert not names[0] & names[1]
    assert record_paths("runs/teacher_lr0.05")["lock"].name == "teacher_lr0.05.lock"


def last_line(proc):
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def teacher_b(image_folder, tmp_path_factory):
    """A dry-run teacher of seed 1: other weights than the teacher_checkpoint fixture's (seed
    0), on the same data; trained once for the module, read-only."""
    out = tmp_path_factory.mktemp("teacher_b") / "teacher_b.pt"
    run_script("train_teacher.py", "--dry-run", "--seed", 1, "--data-root", image_folder,
               "--out", out, "--plots-dir", out.parent)
    return out


@pytest.fixture
def two_teachers(teacher_checkpoint, teacher_b, tmp_path):
    """Teacher A at teacher.pt, and a different teacher B (another seed) beside it: copies of
    the dry-run teachers of seeds 0 and 1, which a test may overwrite."""
    for source, name in ((teacher_checkpoint, "teacher.pt"), (teacher_b, "teacher_b.pt")):
        shutil.copy(source, tmp_path / name)
    return tmp_path / "teacher.pt", tmp_path / "teacher_b.pt"


def student(image_folder, folder, *flags, check=True):
    return run_script("train_student.py", "--loss", "kd", "--epochs", "1", "--batch-size", "32",
                      "--train-subset", "64", "--teacher", folder / "teacher.pt", "--data-root",
                      image_folder, "--out", folder / "student.pt", "--plots-dir", folder, *flags,
                      check=check)


def test_a_student_records_its_teacher_and_data(two_teachers, image_folder, tmp_path):
    teacher, _ = two_teachers
    student(image_folder, tmp_path)
    config = load_checkpoint(tmp_path / "student.pt")["config"]
    ckpt = load_checkpoint(teacher)
    assert config["teacher_identity"]["sha256"] == weights_sha256(ckpt["model_state"])
    assert config["teacher_identity"]["epochs"] == 1
    assert config["teacher_identity"]["val_acc"] == ckpt["history"][-1]["val_acc"]
    assert config["teacher_identity"]["seed"] == 0
    assert config["teacher_identity"]["recipe_sha256"] == recipe_sha256(ckpt["config"])
    assert config["data_identity"] == {**ckpt["config"]["data_identity"]}
    assert config["data_identity"]["layout"] == "imagefolder"
    assert {"git_commit", "git_dirty", "run_id"} <= set(config)


def test_a_teacher_replaced_as_a_student_starts_is_refused(two_teachers, image_folder,
                                                           tmp_path, monkeypatch):
    """The teacher is read for its identity, then again for its weights: replaced in
    between (a sweep's teacher job finishing), the student recorded one teacher and distilled
    from (and stored logits under the name of) the other."""
    teacher, other = two_teachers
    prepare = runs.prepare_run

    def prepare_then_replace(*args, **kwargs):
        prepared = prepare(*args, **kwargs)
        shutil.copy(other, teacher)
        return prepared
    monkeypatch.setattr(runs, "prepare_run", prepare_then_replace)
    with pytest.raises(UserError, match=f"{teacher} changed while this run started"):
        run_in_process("train_student.py", "--loss", "kd", "--dry-run", "--teacher", teacher,
                       "--data-root", image_folder, "--out", tmp_path / "student.pt",
                       "--plots-dir", tmp_path)


def test_an_unfinished_teacher_is_refused_before_it_is_recorded(teacher_checkpoint):
    ckpt = load_checkpoint(teacher_checkpoint)
    identity = ckpt["config"]["data_identity"]
    path = teacher_checkpoint.parent / "unfinished_teacher.pt"
    save_checkpoint({**ckpt, "epochs": ckpt["epoch"] + 1}, path)
    with pytest.raises(UserError, match="unfinished run .*train_teacher.py --resume"):
        runs.teacher_identity(path, identity)


def test_resuming_a_student_whose_teacher_changed_is_refused(two_teachers, image_folder,
                                                             tmp_path):
    teacher, other = two_teachers
    student(image_folder, tmp_path)
    teacher.write_bytes(other.read_bytes())  # the teacher retrained at the same path
    line = last_line(student(image_folder, tmp_path, "--resume", "--epochs", "2", check=False))
    assert "its teacher (weights sha256" in line and str(teacher) in line
    assert load_checkpoint(tmp_path / "student.pt")["epoch"] == 1  # untouched


def test_make_restarts_a_stage_whose_teacher_or_recipe_changed(two_teachers, image_folder,
                                                                tmp_path):
    teacher, other = two_teachers
    student(image_folder, tmp_path, "--lr", "0.05")
    again = ["--resume", "--restart-if-changed", "--lr", "0.05"]  # as make's stage does
    done = student(image_folder, tmp_path, *again).stdout
    # a rerun of make names each finished stage in one line, without advice on extending it
    assert "is already complete (1 epoch)\n" in done and "--epochs" not in done
    # a flag the run's loss does not use (DKD's beta for KD) does not make it stale
    assert "already complete" in student(image_folder, tmp_path, *again, "--dkd-beta", "2").stdout
    first_id = load_checkpoint(tmp_path / "student.pt")["config"]["run_id"]
    # a default that changed (here: the command's LR), then the teacher
    proc = student(image_folder, tmp_path, "--resume", "--restart-if-changed")
    assert "is stale (lr 0.05 -> 0.1)" in proc.stdout
    teacher.write_bytes(other.read_bytes())
    proc = student(image_folder, tmp_path, "--resume", "--restart-if-changed")
    assert "is stale (its teacher" in proc.stdout
    config = load_checkpoint(tmp_path / "student.pt")["config"]
    assert config["lr"] == 0.1 and config["run_id"] != first_id
    assert config["teacher_identity"]["sha256"] == weights_sha256(
        load_checkpoint(other)["model_state"])


def test_a_student_given_its_own_seeds_teacher_is_trained_again_and_pools(
        two_teachers, image_folder, tmp_path):
    """Issue 26: a seed-1 student that learned from the seed-0 teacher and is now given the
    seed-1 teacher (as make and the seed grids pair them) starts over and says why; then it
    pools with the seed-0 student of the seed-0 teacher, whose teachers share a recipe."""
    teacher, seed1_teacher = two_teachers
    student(image_folder, tmp_path, "--out", tmp_path / "seed0.pt")
    student(image_folder, tmp_path, "--seed", "1")
    shas = [weights_sha256(load_checkpoint(t)["model_state"])[:12] for t in two_teachers]
    proc = student(image_folder, tmp_path, "--seed", "1", "--teacher", seed1_teacher,
                   "--resume", "--restart-if-changed")
    assert (f"is stale (its teacher (weights sha256 {shas[0]}, seed 0, 1 epochs" in proc.stdout
            and f"is not {seed1_teacher} (weights sha256 {shas[1]}, seed 1, " in proc.stdout)
    configs = [load_checkpoint(tmp_path / name)["config"] for name in ("seed0.pt", "student.pt")]
    assert configs[1]["teacher_identity"]["seed"] == 1
    assert recipe(configs[0]) == recipe(configs[1])  # one variant, two seeds


def test_a_student_recorded_before_teacher_seeds_and_recipes_still_resumes(
        two_teachers, image_folder, tmp_path):
    """What a student records of its teacher grew (seed, recipe): an older record, without
    them, is neither stale nor refused while its teacher's weights are the same."""
    _, other = two_teachers
    student(image_folder, tmp_path)
    out = tmp_path / "student.pt"
    ckpt = load_checkpoint(out)
    for field in ("seed", "recipe_sha256"):
        del ckpt["config"]["teacher_identity"][field]
    save_checkpoint(ckpt, out)
    record_paths(out)["config"].write_text(json.dumps(ckpt["config"]))
    for again in (["--restart-if-changed"], ["--epochs", "2"]):  # as make does, then extended
        proc = student(image_folder, tmp_path, "--resume", *again)
        assert "stale" not in proc.stdout
    assert load_checkpoint(out)["epoch"] == 2
    proc = student(image_folder, tmp_path, "--teacher", other, "--resume", "--restart-if-changed")
    assert "is stale (its teacher (weights sha256 " in proc.stdout


def test_a_student_without_a_teacher_is_not_stale_for_another_teacher_path(
        two_teachers, image_folder, tmp_path):
    """make gives every student its seed's --teacher, the student trained alone (ce) too,
    which ignores it: a new path is no change of its recipe."""
    _, other = two_teachers
    student(image_folder, tmp_path, "--loss", "ce")
    proc = student(image_folder, tmp_path, "--loss", "ce", "--teacher", other, "--resume",
                   "--restart-if-changed")
    assert "already complete" in proc.stdout and "stale" not in proc.stdout


def test_a_teacher_trained_on_other_data_is_refused(teacher_checkpoint, tmp_path):
    write_image_folder(tmp_path / "other", n_train=30, n_test=5, seed=7)
    proc = run_script("train_student.py", "--dry-run", "--teacher", teacher_checkpoint,
                      "--data-root", tmp_path / "other", "--out", tmp_path / "s.pt", check=False)
    assert "trained on other data" in last_line(proc)


def test_test_records_always_describe_the_checkpoint_beside_them(image_folder, tmp_path):
    out, test = tmp_path / "student.pt", tmp_path / "student.test.json"
    common = ["--loss", "ce", "--batch-size", "32", "--train-subset", "64", "--data-root",
              image_folder, "--out", out, "--plots-dir", tmp_path]
    run_script("train_student.py", *common, "--epochs", "1")
    record = json.loads(test.read_text())
    assert record["epoch"] == 1 and record["run_id"] == load_checkpoint(out)["config"]["run_id"]
    # extended without a test: the epoch-1 record goes
    run_script("train_student.py", *common, "--resume", "--epochs", "2", "--skip-test")
    assert not test.exists()
    # a complete run without its record (e.g. interrupted during the test): computed on rerun
    proc = run_script("train_student.py", *common, "--resume")
    assert "test loss" in proc.stdout and json.loads(test.read_text())["epoch"] == 2
    # started over: the old run's record goes with the first new epoch
    run_script("train_student.py", *common, "--overwrite", "--epochs", "1", "--skip-test")
    assert not test.exists()


def test_auto_precision_keeps_a_finished_run_of_either_precision(two_teachers, image_folder,
                                                                  tmp_path):
    """--precision auto is the machine's choice for a new run; a run that exists keeps the
    precision it was trained in (a teacher trained in bf16 on a GPU is current on a CPU where
    auto means fp32, as resuming it keeps its precision anyway). A precision named outright
    that differs is a change of recipe."""
    here = resolve_precision("auto", torch.device("cpu"))
    other = "fp32" if here == "bf16" else "bf16"
    student(image_folder, tmp_path, "--precision", other)
    proc = student(image_folder, tmp_path, "--resume", "--restart-if-changed")
    assert "already complete" in proc.stdout and "stale" not in proc.stdout
    proc = student(image_folder, tmp_path, "--resume", "--restart-if-changed",
                   "--precision", here)
    assert f"is stale (precision '{other}' -> '{here}')" in proc.stdout
    assert load_checkpoint(tmp_path / "student.pt")["config"]["precision"] == here


def test_a_new_bf16_run_on_a_cpu_without_bf16_units_is_told_it_is_emulated(
        image_folder, tmp_path, monkeypatch, capsys):
    """--precision bf16 on a CPU without bf16 units trained 11-18x slower than fp32 there
    (docs/performance.md), without a word; auto chooses fp32 on such a CPU."""
    for native in (True, False):
        monkeypatch.setattr("kd.runs.bf16_is_native", lambda device, native=native: native)
        run_in_process("train_student.py", "--loss", "ce", "--epochs", "1", "--batch-size",
                       "32", "--train-subset", "64", "--data-root", image_folder, "--out",
                       tmp_path / f"{native}.pt", "--plots-dir", tmp_path, "--precision", "bf16")
        said = "note: --precision bf16 on this cpu, which has no native bf16 units" in (
            capsys.readouterr().out)
        assert said is not native


def test_a_bf16_run_continued_without_bf16_units_says_how_to_start_it_in_fp32(
        two_teachers, image_folder, tmp_path, monkeypatch, capsys):
    student(image_folder, tmp_path, "--precision", "bf16")
    monkeypatch.setattr("kd.runs.bf16_is_native", lambda device: False)
    flags = ("--loss", "kd", "--batch-size", "32", "--train-subset", "64", "--teacher",
             tmp_path / "teacher.pt", "--data-root", image_folder, "--out",
             tmp_path / "student.pt", "--plots-dir", tmp_path, "--resume")
    run_in_process("train_student.py", *flags)  # finished: nothing to continue, no note
    assert "no native units" not in capsys.readouterr().out
    run_in_process("train_student.py", *flags, "--epochs", "2")
    assert (f"note: {tmp_path / 'student.pt'} trains in bf16, which this cpu has no native "
            f"units for; --precision fp32 with --restart-if-changed starts it over in fp32"
            in capsys.readouterr().out)
    assert load_checkpoint(tmp_path / "student.pt")["config"]["precision"] == "bf16"


def test_the_sweeps_check_finds_what_restart_if_changed_finds(two_teachers, image_folder,
                                                               tmp_path, monkeypatch):
    """runs.stale_reasons, which sweep.py asks before it skips a finished run: current as
    the run was given; stale for a changed default and for a retrained teacher; and a run
    for --device cuda is checked where the sweep runs, on a machine without a GPU too."""
    teacher, other = two_teachers
    student(image_folder, tmp_path, "--lr", "0.05")
    flags = ["--loss", "kd", "--epochs", "1", "--batch-size", "32", "--train-subset", "64",
             "--teacher", str(teacher), "--data-root", str(image_folder), "--out",
             str(tmp_path / "student.pt"), "--lr", "0.05"]
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    for device in ("cpu", "cuda"):
        assert stale_reasons(*train_student.parse([*flags, "--device", device])) == []
    assert stale_reasons(*train_student.parse(flags[:-2])) == ["lr 0.05 -> 0.1"]
    teacher.write_bytes(other.read_bytes())
    [reason] = stale_reasons(*train_student.parse(flags))
    assert reason.startswith("its teacher (weights sha256 ")


def with_split(checkpoint, split_sha256):
    """The checkpoint (and its config record) as if its validation split had been drawn as
    `split_sha256` says: what a torch whose randperm draws another permutation leaves."""
    ckpt = load_checkpoint(checkpoint)
    ckpt["config"]["data_identity"]["split_sha256"] = split_sha256
    save_checkpoint(ckpt, checkpoint)
    if record_paths(checkpoint)["config"].exists():
        record_paths(checkpoint)["config"].write_text(json.dumps(ckpt["config"]))


def test_a_run_records_its_validation_split_and_a_moved_split_is_refused(
        two_teachers, image_folder, tmp_path):
    """The validation split is a torch.randperm of the training set: a torch that draws
    another permutation would move it unseen (the images' hash stays). Runs record the split's
    hash; a teacher or a resumed run whose recorded split differs is refused or stale, and a
    run from before the split was recorded is still accepted."""
    teacher, _ = two_teachers
    student(image_folder, tmp_path)
    split = load_checkpoint(tmp_path / "student.pt")["config"]["data_identity"]["split_sha256"]
    assert split == load_checkpoint(teacher)["config"]["data_identity"]["split_sha256"]
    assert len(split) == 64

    with_split(tmp_path / "student.pt", "0" * 64)
    proc = student(image_folder, tmp_path, "--resume", "--restart-if-changed")
    assert "is stale (its data (" in proc.stdout and "validation split" in proc.stdout
    with_split(tmp_path / "student.pt", None)  # recorded before the split was: unchecked
    proc = student(image_folder, tmp_path, "--resume", "--restart-if-changed")
    assert "stale" not in proc.stdout

    with_split(teacher, "0" * 64)
    proc = student(image_folder, tmp_path, "--out", tmp_path / "s2.pt", check=False)
    assert "trained on other data" in last_line(proc) and "validation split" in last_line(proc)
