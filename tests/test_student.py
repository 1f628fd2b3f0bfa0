"""train_student.py: the teacher is left untouched, and the variants differ by the loss alone."""
import argparse
import gc
from types import SimpleNamespace

import pytest
import torch

import train_student

import methods
from conftest import run_in_process, run_script
from kd import cli, engine, runs, teacher_logits
from kd.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from kd.teacher_logits import SharedTeacherLogits, cache_path, fingerprint
from models import build_model, load_model

# The methods on logits; the feature methods' runs, teachers and resumes are checked in
# tests/test_feature_methods.py.
LOGIT_METHODS = [name for name, cls in methods.METHODS.items() if not cls.features]


def run_variant(kind, teacher, image_folder, out, record):
    parser = argparse.ArgumentParser()
    cli.add_common_args(parser, out=str(out), epochs=1, batch_size=64, lr=0.05,
                        optimizer="sgd", schedule="onecycle", ema_decay=0.0)
    args = parser.parse_args(["--device", "cpu", "--data-root", str(image_folder), "--plots-dir",
                              str(out.parent)])
    args, device, splits, ckpt = runs.prepare_run(args, "student")
    config = {"loss": kind, "temperature": 4.0, "alpha": 0.9}

    class Recorded(methods.METHODS[kind]):
        def forward(self, student, images, labels, positions):
            logits, parts, scored = super().forward(student, images, labels, positions)
            record.append((images.clone(), labels.clone(), logits.detach().clone()))
            return logits, parts, scored
    method = Recorded(config, teacher if Recorded.uses_teacher else None,
                      train_labels=splits["train"][1])
    engine.fit("student", method, args, device, splits, ckpt)


def test_variants_start_equal_see_the_same_batches_and_leave_the_teacher_alone(
        teacher_checkpoint, image_folder, tmp_path):
    teacher = load_model(teacher_checkpoint, kind="teacher").requires_grad_(False)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    records = {}
    for kind in LOGIT_METHODS:
        records[kind] = []
        run_variant(kind, teacher, image_folder, tmp_path / f"{kind}.pt", records[kind])
    # The teacher's weights and BatchNorm buffers (running stats, batch count) are untouched.
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not teacher.training
    base = records["kd+ce"]
    for kind in ("kd", "ce"):
        other = records[kind]
        assert len(other) == len(base) > 1
        for (x1, y1, _), (x2, y2, _) in zip(base, other):
            assert torch.equal(x1, x2) and torch.equal(y1, y2)
        # Identical initial weights: identical logits on the identical first batch.
        assert torch.equal(base[0][2], other[0][2])
    # ... and the losses do make them differ afterwards.
    assert not torch.equal(base[1][2], records["ce"][1][2])


@pytest.mark.parametrize("loss", LOGIT_METHODS)
def test_dry_run_of_each_variant(teacher_checkpoint, image_folder, tmp_path, loss):
    proc = run_script("train_student.py", "--dry-run", "--loss", loss, "--teacher",
                      teacher_checkpoint, "--data-root", image_folder, "--out",
                      tmp_path / f"student_{loss}_seed0.pt", "--plots-dir", tmp_path / "plots")
    assert f"student_{loss}_seed0 epoch 1/1" in proc.stdout
    student = load_model(tmp_path / f"student_{loss}_seed0.pt", kind="student")
    assert student.state_dict().keys() == build_model("student").state_dict().keys()
    assert (tmp_path / "plots" / f"student_{loss}_seed0_curves.png").is_file()
    assert (tmp_path / "plots" / "students_compare.png").is_file()
    header = (tmp_path / f"student_{loss}_seed0.metrics.csv").read_text().splitlines()[0]
    assert ("train_kd" in header and "train_ce" in header) == (loss != "ce")


@pytest.mark.parametrize("flags, fragment", [
    (["--temperature", "0"], "temperature"),
    (["--alpha", "1.5"], "alpha"),
    (["--teacher", "missing.pt"], "not found"),
])
def test_bad_student_flags(teacher_checkpoint, image_folder, tmp_path, flags, fragment):
    proc = run_script("train_student.py", "--dry-run", "--teacher", teacher_checkpoint,
                      "--data-root", image_folder, "--out", tmp_path / "s.pt", *flags,
                      check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert fragment in proc.stderr.strip().splitlines()[-1]


def test_a_student_given_as_teacher_is_refused(teacher_checkpoint, image_folder, tmp_path):
    student = tmp_path / "student_ce_seed0.pt"
    run_in_process("train_student.py", "--dry-run", "--loss", "ce", "--data-root", image_folder,
                   "--out", student, "--plots-dir", tmp_path)
    proc = run_script("train_student.py", "--dry-run", "--teacher", student, "--data-root",
                      image_folder, "--out", tmp_path / "s.pt", check=False)
    assert proc.returncode == 2 and "not a teacher" in proc.stderr


def test_logit_standardization_dry_run_and_where_it_does_not_apply(teacher_checkpoint,
                                                                   image_folder, tmp_path):
    common = ["--dry-run", "--teacher", teacher_checkpoint, "--data-root", image_folder,
              "--plots-dir", tmp_path]
    proc = run_script("train_student.py", *common, "--loss", "dkd", "--logit-standardize",
                      "--out", tmp_path / "student_dkd+ls_seed0.pt")
    assert "student_dkd+ls_seed0 epoch 1/1" in proc.stdout
    assert load_checkpoint(tmp_path / "student_dkd+ls_seed0.pt")["config"]["logit_standardize"]
    proc = run_script("train_student.py", *common, "--loss", "dist", "--logit-standardize",
                      "--out", tmp_path / "s.pt", check=False)
    assert proc.returncode == 2 and "--logit-standardize goes with" in proc.stderr


def test_dkd_weight_warms_up_with_the_optimizer_step():
    """CE + w · DKD with w = (step + 1) / (warm-up steps), capped at 1; after set_epoch (as
    on resume) w follows the global step, not the calls made in this process."""
    torch.manual_seed(0)
    teacher = torch.nn.Linear(4, 10).requires_grad_(False)
    images, labels = torch.randn(8, 4), torch.randint(0, 10, (8,))
    logits = torch.randn(8, 10)
    method = methods.build({"loss": "dkd", "dkd_warmup": 1.0}, teacher)
    method.set_epoch(0, steps_per_epoch=4)
    weights = []
    for _ in range(5):
        _, parts, _ = method(lambda images: logits, images, labels, None)
        weights.append(((parts["loss"] - parts["ce"]) / parts["kd"]).item())
    assert weights == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    method.set_epoch(1, steps_per_epoch=4)  # a resumed run starts past the warm-up
    _, parts, _ = method(lambda images: logits, images, labels, None)
    assert ((parts["loss"] - parts["ce"]) / parts["kd"]).item() == pytest.approx(1.0)


def test_shared_teacher_logits_give_the_same_weights_and_catch_other_batches(
        teacher_checkpoint, image_folder, tmp_path):
    """A seed's logits stored by its first KD run, served to the next, of the same length or
    longer (the stored epochs, then its own, and the longer store kept); the same weights as
    a run computing its own. In this process but the run whose error must be one line from
    the shell."""
    common = ["--loss", "kd", "--batch-size", "32", "--train-subset", "64", "--teacher",
              teacher_checkpoint, "--data-root", image_folder, "--plots-dir", tmp_path]
    two, three = [*common, "--epochs", "2"], [*common, "--epochs", "3"]
    run_in_process("train_student.py", *two, "--out", tmp_path / "first.pt")  # stores them
    stored = list((tmp_path / "teacher_logits").glob("*.pt"))
    assert len(stored) == 1
    run_in_process("train_student.py", *two, "--out", tmp_path / "shared.pt")  # serves them
    run_in_process("train_student.py", *two, "--out", tmp_path / "own.pt", "--no-shared-logits")
    # a store whose batches are not this run's: one error line, not a silent fallback; the
    # longer run is served the 2 stored epochs (epoch 2's batch is caught)
    store = torch.load(stored[0], weights_only=True)
    bad = {**store, "fingerprints": store["fingerprints"].clone()}
    bad["fingerprints"][1, 0, 0] += 1
    torch.save(bad, stored[0])
    proc = run_script("train_student.py", *three, "--out", tmp_path / "bad.pt", check=False)
    assert proc.returncode == 2
    assert "belong to other batches" in proc.stderr.strip().splitlines()[-1]
    assert load_checkpoint(tmp_path / "bad.pt")["epoch"] == 1  # stopped before saving epoch 2
    torch.save(store, stored[0])
    run_in_process("train_student.py", *three, "--out", tmp_path / "longer.pt")
    run_in_process("train_student.py", *three, "--out", tmp_path / "longer_own.pt",
                   "--no-shared-logits")
    weights = {name: load_model(tmp_path / f"{name}.pt").state_dict()
               for name in ("first", "shared", "own", "longer", "longer_own")}
    for key, value in weights["own"].items():
        assert torch.equal(weights["shared"][key], value) and torch.equal(
            weights["first"][key], value), key
    for key, value in weights["longer_own"].items():
        assert torch.equal(weights["longer"][key], value), key
    longer = torch.load(stored[0], weights_only=True)  # the longer run's store replaced it
    assert longer["fingerprints"].shape[:2] == (3, 2)
    assert torch.equal(longer["logits"][:2], store["logits"])


def test_resuming_a_checkpoint_without_a_run_config_is_no_key_error(tmp_path):
    """A model-only checkpoint (one evaluate.py and --teacher accept) given to --resume:
    reading its recorded loss raised KeyError: 'config' before any check could say why."""
    out = tmp_path / "model.pt"
    save_checkpoint({"model": "student", "model_state": build_model("student").state_dict()},
                    out)
    args, _ = train_student.parse(["--resume", "--out", str(out), "--loss", "kd"])
    assert args.loss == "kd"


def a_teacher():
    torch.manual_seed(0)
    return build_model("teacher").eval().requires_grad_(False)


def cache_args():
    """A student run's settings, as cache_path reads them."""
    return SimpleNamespace(teacher_identity={"sha256": "t"}, data_identity={"sha256": "d"},
                           out="runs/student.pt", seed=0, batch_size=128, train_subset=None,
                           no_augment=False, dry_run=False, precision="bf16")


def test_logits_are_stored_apart_per_torch_version_and_machine(monkeypatch):
    """Served logits must be the ones this run would compute: other kernels (a torch
    upgrade, a checkpoint folder shared by a cluster's A100 and H100 nodes) give other
    bits, which were served under one key."""
    args, cpu, teacher = cache_args(), torch.device("cpu"), a_teacher()
    first = cache_path(args, cpu, teacher)
    with monkeypatch.context() as patch:
        patch.setattr(torch, "__version__", "9.9.9")
        assert cache_path(args, cpu, teacher) != first
    assert cache_path(args, cpu, teacher) == first
    monkeypatch.setattr(teacher_logits, "machine_name", lambda device: "another CPU")
    assert cache_path(args, cpu, teacher) != first


def test_logits_are_stored_apart_per_way_the_teacher_computes_them(monkeypatch):
    """Under the same weights, code outside CODE_FILES may change the teacher's logits: the
    autocast kd.device gives a bf16 run, a forward changed at run time. The key holds a
    digest of the teacher's forward on a fixed batch, computed as a run computes it; without
    it the old logits were served."""
    args, cpu, teacher = cache_args(), torch.device("cpu"), a_teacher()
    first = cache_path(args, cpu, teacher)
    assert cache_path(args, cpu, a_teacher()) == first  # the same teacher: the same key
    with monkeypatch.context() as patch:
        patch.setattr(teacher_logits, "autocast",
                      lambda device, precision: torch.autocast("cpu", dtype=torch.float16))
        assert cache_path(args, cpu, teacher) != first
    forward = teacher.forward
    monkeypatch.setattr(teacher, "forward", lambda images: forward(images) + 1)
    assert cache_path(args, cpu, teacher) != first


@pytest.mark.parametrize("edited", ["models.py", "kd/data.py"])
def test_logits_are_stored_apart_per_version_of_the_code_they_depend_on(
        edited, monkeypatch, tmp_path):
    """models.py: an edit to the teacher's forward that keeps its weights' names and shapes
    (and so its identity) was served the old forward's logits, as the fingerprints check
    only the inputs. kd/data.py: an edit to the split or the augmentation was served the old
    batches' logits for a whole epoch, then stopped by the fingerprints."""
    args, cpu, teacher = cache_args(), torch.device("cpu"), a_teacher()
    first = cache_path(args, cpu, teacher)
    files = [tmp_path / name.replace("/", "_") for name in teacher_logits.CODE_FILES]
    for copy, name in zip(files, teacher_logits.CODE_FILES):
        copy.write_text((teacher_logits.ROOT / name).read_text())
    monkeypatch.setattr(teacher_logits, "CODE_FILES", tuple(str(f) for f in files))
    assert cache_path(args, cpu, teacher) == first
    copy = tmp_path / edited.replace("/", "_")
    copy.write_text(copy.read_text() + "\n")
    assert cache_path(args, cpu, teacher) != first


def test_a_batch_rearranged_within_its_images_has_another_fingerprint():
    """A flip keeps every image's pixel sum: a pipeline whose flips changed must still be
    caught serving stored logits."""
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    assert (fingerprint(images) != fingerprint(images.flip(-1))).any()
    assert (fingerprint(images) != fingerprint(images[[1, 0, 2, 3]])).any()


def test_a_store_of_two_number_fingerprints_is_still_served_checked_and_upgraded(tmp_path):
    """Stores written before the third number still serve their runs, checked on the two
    they hold; a longer run stores every fingerprint whole."""
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    batches = [torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8).float()
               for _ in range(2)]
    with torch.no_grad():
        logits = torch.stack([teacher(b) for b in batches])
    old = torch.stack([fingerprint(b)[:2] for b in batches])
    path = tmp_path / "store.pt"
    torch.save({"fingerprints": old.view(1, 2, 2), "logits": logits.view(1, 2, 2, 10)}, path)
    shared = SharedTeacherLogits(teacher, path, epochs=2)
    shared.set_epoch(0, steps_per_epoch=2)
    with torch.no_grad():
        served = [shared(0, s, b) for s, b in enumerate(batches)]
        shared.end_epoch(0)
        assert shared.served == 2 and all(torch.equal(a, b) for a, b in zip(served, logits))
        for s, b in enumerate(batches):
            shared(1, s, b)
        shared.end_epoch(1)
    assert torch.load(path, weights_only=True)["fingerprints"].shape == (2, 2, 3)

    torch.save({"fingerprints": old.view(1, 2, 2), "logits": logits.view(1, 2, 2, 10)}, path)
    shared = SharedTeacherLogits(teacher, path, epochs=1)
    shared.set_epoch(0, steps_per_epoch=2)
    with torch.no_grad():
        shared(0, 0, batches[1])
    with pytest.raises(CheckpointError, match="belong to other batches"):
        shared.end_epoch(0)


def test_a_resumed_run_over_a_two_number_store_stores_its_longer_one(tmp_path):
    """A run extended past an older store (resumed, so the store's epochs are not served
    again and keep their two numbers) stores the longer store all the same, each batch
    fingerprinted by the numbers every batch has."""
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    batches = {(e, s): torch.randint(0, 256, (2, 3, 32, 32)).float()
               for e in range(3) for s in range(2)}
    with torch.no_grad():
        old = torch.stack([fingerprint(batches[e, s])[:2] for e in range(2) for s in range(2)])
        logits = torch.stack([teacher(batches[e, s]) for e in range(2) for s in range(2)])
    path = tmp_path / "store.pt"
    torch.save({"fingerprints": old.view(2, 2, 2), "logits": logits.view(2, 2, 2, 10)}, path)
    shared = SharedTeacherLogits(teacher, path, epochs=3)
    shared.set_epoch(2, steps_per_epoch=2)
    with torch.no_grad():
        for s in range(2):
            shared(2, s, batches[2, s])
        shared.end_epoch(2)
    stored = torch.load(path, weights_only=True)
    assert stored["fingerprints"].shape == (3, 2, 2)
    assert torch.equal(stored["fingerprints"][:2], old.view(2, 2, 2))


def test_a_resume_with_another_loss_typed_continues_the_runs_method(teacher_checkpoint,
                                                                    image_folder, tmp_path,
                                                                    capsys):
    """`--resume --out s.pt --loss ce` of a KD run: --loss is a recipe flag like the others,
    not used and said so; it decided which teacher the run has, and the run was refused for
    a teacher "changed" to none."""
    common = ["--data-root", image_folder, "--plots-dir", tmp_path, "--out", tmp_path / "s.pt",
              "--train-subset", "64"]
    run_in_process("train_student.py", "--loss", "kd+ce", "--epochs", "1", "--teacher",
                   teacher_checkpoint, *common)
    capsys.readouterr()
    run_in_process("train_student.py", "--resume", "--loss", "ce", "--epochs", "2", *common)
    out = capsys.readouterr().out
    assert "settings not used (recorded -> given): loss 'kd+ce' -> 'ce'" in out
    ckpt = load_checkpoint(tmp_path / "s.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["loss"] == "kd+ce"
    assert ckpt["config"]["teacher"] == str(teacher_checkpoint)


def test_a_bare_resume_takes_the_runs_method_before_it_loads_a_teacher(image_folder, tmp_path,
                                                                       capsys):
    """`--resume --out s.pt` of a student trained alone: the method is the run's (ce, which
    needs no teacher), not the command's default kd+ce, which loaded the default teacher."""
    common = ["--data-root", image_folder, "--plots-dir", tmp_path, "--out", tmp_path / "s.pt"]
    run_in_process("train_student.py", "--loss", "ce", "--epochs", "1", "--train-subset", "64",
                   *common)
    run_in_process("train_student.py", "--resume", "--teacher", tmp_path / "none.pt", *common)
    assert ("is already complete (1 epoch); pass --epochs N > 1 with --resume to extend it"
            in capsys.readouterr().out)
    # a flag is taken whole, so an abbreviation cannot pass for a flag left out
    with pytest.raises(SystemExit):
        train_student.parse(["--resume", "--los", "dkd", "--out", str(tmp_path / "s.pt")])
    # --restart-if-changed compares the run with the command, its default --loss included
    args, _ = train_student.parse(["--resume", "--restart-if-changed", "--out",
                                   str(tmp_path / "s.pt")])
    assert args.loss == "kd+ce"


def test_the_logits_kept_are_two_tensors_however_many_batches():
    """A small tensor kept per batch (the logits, the fingerprint) sat between each step's
    temporaries on glibc's heap: a one-thread DKD run grew by about 260 MB per full-data
    epoch (docs/usage.md). The run's logits and fingerprints are two tensors, allocated once."""
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    shared = SharedTeacherLogits(teacher, "/nonexistent/store.pt", epochs=3)

    def live_tensors():
        gc.collect()
        return sum(issubclass(type(o), torch.Tensor) for o in gc.get_objects())
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        shared.set_epoch(0, steps_per_epoch=4)
        shared(0, 0, images)
        before = live_tensors()
        for epoch in range(3):
            for step in range(4):
                if (epoch, step) != (0, 0):
                    shared(epoch, step, images)
    assert live_tensors() == before
    assert shared.logits.shape == (3, 4, 2, 10) and shared.fingerprints.shape == (3, 4, 3)
