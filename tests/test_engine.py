import argparse
import json
import re
import signal
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook

import methods
from conftest import run_in_process
from kd import cli, engine, interrupts, runs
from kd.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from kd.data import load_cifar10, split_train_val
from kd.schedule import load_optimizer_state, lr_factor, make_optimizer
from models import build_model, load_model


def parse(image_folder, tmp_path, *flags, name="student"):
    parser = argparse.ArgumentParser()
    cli.add_common_args(parser, out=str(tmp_path / f"{name}.pt"), epochs=3, batch_size=32,
                        lr=0.05, optimizer="sgd", schedule="onecycle", ema_decay=0.0)
    return parser.parse_args(["--device", "cpu", "--data-root", str(image_folder), "--plots-dir",
                              str(tmp_path / "plots"), *map(str, flags)])


class HookedCE(methods.CE):
    """Cross-entropy that calls `hook(logits)` before each step's loss."""

    def __init__(self, hook):
        super().__init__({})
        self.hook = hook

    def loss(self, student, teacher, labels, positions):
        self.hook(student.logits)
        return super().loss(student, teacher, labels, positions)


def train(args, method=None):
    args, device, splits, ckpt = runs.prepare_run(args, "student")
    return engine.fit("student", method or methods.CE({}), args, device, splits, ckpt)


def test_training_learns_a_learnable_set(image_folder, tmp_path):
    train(parse(image_folder, tmp_path, "--epochs", 6))
    history = load_checkpoint(tmp_path / "student.pt")["history"]
    assert history[-1]["val_acc"] >= 90 and history[-1]["train_acc"] >= 90
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def interrupt_after(steps):
    calls = {"n": 0}

    def count(logits):
        calls["n"] += 1
        if calls["n"] > steps:
            raise KeyboardInterrupt
    return HookedCE(count)


def test_resume_equals_an_uninterrupted_run(image_folder, tmp_path):
    full = train(parse(image_folder, tmp_path / "a", "--epochs", 3))
    args = parse(image_folder, tmp_path / "b", "--epochs", 3)
    with pytest.raises(KeyboardInterrupt):
        train(args, interrupt_after(8 + 3))  # 270 images / 32 = 8 steps per epoch: mid-epoch 2
    assert load_checkpoint(tmp_path / "b" / "student.pt")["epoch"] == 1
    resumed = train(parse(image_folder, tmp_path / "b", "--resume"))
    for (key, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key
    history_a = load_checkpoint(tmp_path / "a" / "student.pt")["history"]
    history_b = load_checkpoint(tmp_path / "b" / "student.pt")["history"]
    def timeless(history):
        return [{k: v for k, v in row.items() if "second" not in k} for row in history]
    assert timeless(history_a) == timeless(history_b)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_swallowed_by_a_finalizer_still_stops_training(image_folder, tmp_path,
                                                                    monkeypatch):
    """Python ignores exceptions raised in finalizers; a Ctrl-C that lands in one (matplotlib
    closing a figure did, under load) must still stop the run within a step."""
    monkeypatch.setattr(interrupts, "_interrupt_requested", False)
    calls = {"n": 0}

    class InterruptedFinalizer:
        def __del__(self):
            interrupts._raise_interrupt(signal.SIGINT, None)  # as if the signal arrived here

    def count(logits):
        calls["n"] += 1
        if calls["n"] == 3:
            InterruptedFinalizer()  # dropped at once: "Exception ignored in ... __del__"
    with pytest.raises(KeyboardInterrupt):
        train(parse(image_folder, tmp_path, "--epochs", 3), HookedCE(count))
    assert calls["n"] == 3


def test_a_caught_interrupt_does_not_stop_a_later_run(image_folder, tmp_path, monkeypatch):
    """One Ctrl-C, deferred and then caught, is spent: a later fit in the same process runs
    to its end instead of stopping after its first step."""
    monkeypatch.setattr(interrupts, "_interrupt_requested", False)
    with pytest.raises(KeyboardInterrupt):
        with interrupts.interrupts_deferred():
            interrupts._note_interrupt(signal.SIGINT, None)  # as if Ctrl-C arrived here
    train(parse(image_folder, tmp_path, "--epochs", 2))
    assert load_checkpoint(tmp_path / "student.pt")["epoch"] == 2


def test_compile_flag_compiles_the_training_steps_only(image_folder, tmp_path, monkeypatch):
    """Bare --compile is torch.compile's default mode, --compile reduce-overhead its CUDA
    graphs; either way only the training steps run compiled, with static shapes
    (kd.engine.compiled: dynamic=False)."""
    compiled, stepped, modes = [], [], []

    def fake_compile(model, mode=None, dynamic=None):  # the wiring, without a compilation
        assert dynamic is False
        compiled.append(model)
        modes.append(mode)

        def step_model(images):
            stepped.append(len(images))
            return model(images)
        step_model.train, step_model.parameters = model.train, model.parameters
        return step_model
    monkeypatch.setattr(torch, "compile", fake_compile)
    model = train(parse(image_folder, tmp_path, "--epochs", 1, "--compile"))
    assert compiled == [model] and len(stepped) == 270 // 32  # every training step
    plain = train(parse(image_folder, tmp_path / "plain", "--epochs", 1))
    assert len(compiled) == 1 and plain is not model
    graphs = train(parse(image_folder, tmp_path / "graphs", "--epochs", 1, "--compile",
                         "reduce-overhead"))
    assert compiled[1:] == [graphs] and modes == ["default", "reduce-overhead"]


def test_resume_takes_the_recipe_from_the_checkpoint(image_folder, tmp_path):
    train(parse(image_folder, tmp_path, "--epochs", 1, "--lr", 0.01))
    args, *_ = runs.prepare_run(parse(image_folder, tmp_path, "--resume", "--lr", 0.5), "student")
    assert args.lr == 0.01 and args.epochs == 1


def test_extending_a_finished_run_starts_a_fresh_cycle(image_folder, tmp_path):
    train(parse(image_folder, tmp_path, "--epochs", 1))
    train(parse(image_folder, tmp_path, "--resume", "--epochs", 2))
    ckpt = load_checkpoint(tmp_path / "student.pt")
    assert ckpt["epoch"] == 2 and ckpt["schedule_start_epoch"] == 1
    assert [r["epoch"] for r in ckpt["history"]] == [1, 2]
    # the new cycle ended too: its last step ran at the cycle's last, smallest LR
    assert ckpt["history"][1]["lr"] == pytest.approx(0.05 * lr_factor(15, 8, 1, 2, "onecycle",
                                                                       0.2))


def test_an_extended_runs_first_step_takes_its_new_cycles_lr(image_folder, tmp_path):
    """The scheduler restored holds the old cycle's last LR (0 at its end): the first step
    of the extension must already run at the new cycle's."""
    train(parse(image_folder, tmp_path, "--epochs", 1))
    lrs = []
    handle = register_optimizer_step_pre_hook(
        lambda optimizer, args, kwargs: lrs.append(optimizer.param_groups[0]["lr"]))
    try:
        train(parse(image_folder, tmp_path, "--resume", "--epochs", 2))
    finally:
        handle.remove()
    steps = 270 // 32
    assert lrs[0] == pytest.approx(0.05 * lr_factor(steps, steps, 1, 2, "onecycle", 0.2))


@pytest.mark.parametrize("warmup", [0.2, 0.5])  # the default, and --warmup reaching the steps
def test_the_lr_column_is_the_lr_of_each_epochs_last_step(image_folder, tmp_path, warmup):
    train(parse(image_folder, tmp_path, "--epochs", 3, "--warmup", warmup))
    history = load_checkpoint(tmp_path / "student.pt")["history"]
    steps = 270 // 32  # per epoch
    expected = [0.05 * lr_factor((e + 1) * steps - 1, steps, 0, 3, "onecycle", warmup)
                for e in range(3)]
    assert [row["lr"] for row in history] == pytest.approx(expected)
    assert history[-1]["lr"] > 0  # not the LR after the last step, which is always 0


class RecordingCE(methods.CE):
    """Cross-entropy that keeps each step's images, positions and loss, per epoch."""

    def __init__(self):
        super().__init__({})
        self.epochs = []

    def set_epoch(self, epoch, steps_per_epoch):
        super().set_epoch(epoch, steps_per_epoch)
        self.epochs.append([])

    def forward(self, student, images, labels, positions):
        logits, parts, scored = super().forward(student, images, labels, positions)
        self.epochs[-1].append((images.detach().clone(), positions.clone(),
                                parts["loss"].item()))
        return logits, parts, scored

    def images_by_position(self, epoch):
        return {int(p): image for images, positions, _ in self.epochs[epoch]
                for p, image in zip(positions, images)}


@pytest.mark.parametrize("augment", [True, False])
def test_each_epoch_draws_its_own_order_and_views_unless_no_augment(image_folder, tmp_path,
                                                                     augment):
    """Without the loader's set_epoch every epoch replayed epoch 0's order and crops, and
    without --no-augment reaching the loader its runs were augmented all the same: no
    test compared two epochs."""
    method = RecordingCE()
    train(parse(image_folder, tmp_path, "--epochs", 2, *([] if augment else ["--no-augment"])),
          method)
    orders = [torch.cat([positions for _, positions, _ in epoch]) for epoch in method.epochs]
    assert not torch.equal(orders[0], orders[1])
    first, second = method.images_by_position(0), method.images_by_position(1)
    same = [torch.equal(first[p], second[p]) for p in first.keys() & second.keys()]
    assert len(same) > 100
    if augment:
        assert sum(same) < len(same) / 2
    else:
        assert all(same)


def test_the_training_columns_are_the_means_over_the_epochs_images(image_folder, tmp_path):
    """The history's train_loss is the mean of the steps' losses (equal batches, drop_last):
    dropping the per-batch weight made it a batch size smaller, unseen."""
    method = RecordingCE()
    train(parse(image_folder, tmp_path, "--epochs", 2), method)
    history = load_checkpoint(tmp_path / "student.pt")["history"]
    for row, epoch in zip(history, method.epochs, strict=True):
        losses = [loss for _, _, loss in epoch]
        assert row["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)


def test_the_curves_figure_is_drawn_with_every_epoch_at_the_end(image_folder, tmp_path,
                                                                 monkeypatch):
    """A run faster than the redraw interval drew its figure after epoch 1 only: the last
    epoch forces it."""
    drawn = []
    monkeypatch.setattr(engine.plotting, "plot_curves",
                        lambda history, path, title, second_model: drawn.append(len(history)))
    train(parse(image_folder, tmp_path, "--epochs", 3))
    assert drawn[0] == 1 and drawn[-1] == 3  # epoch 2 as well on a machine slower than 30 s


def test_a_non_finite_loss_on_a_step_not_read_stops_the_epoch():
    """On a GPU the loss is read every sync_every steps; a NaN in between is caught by the
    epoch's sum, naming the last step read."""
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), None)
               for _ in range(6)]

    class NaNValueAtStep2(methods.CE):  # a NaN loss value whose gradient is finite
        steps = 0

        def loss(self, student, teacher, labels, positions):
            self.steps += 1
            parts = super().loss(student, teacher, labels, positions)
            if self.steps == 2:
                parts["loss"] = parts["loss"] + torch.tensor(float("nan"))
            return parts
    model = build_model("student")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(FloatingPointError, match="non-finite loss after step 6"):
        engine.train_one_epoch(model, batches, NaNValueAtStep2({}), optimizer, scheduler,
                               torch.device("cpu"), sync_every=5)


def test_clip_grad_norm_reaches_the_training_steps(image_folder, tmp_path):
    train(parse(image_folder, tmp_path, "--epochs", 1, "--clip-grad-norm", 1e-3))
    assert load_checkpoint(tmp_path / "student.pt")["history"][0]["train_clipped"] == 1.0


def test_interrupted_run_must_finish_before_it_is_extended(image_folder, tmp_path):
    args = parse(image_folder, tmp_path, "--epochs", 3)
    with pytest.raises(KeyboardInterrupt):
        train(args, interrupt_after(10))
    with pytest.raises(cli.UserError, match="--epochs 3"):
        runs.prepare_run(parse(image_folder, tmp_path, "--resume", "--epochs", 5), "student")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(image_folder, tmp_path):
    train(parse(image_folder, tmp_path, "--epochs", 1, "--schedule", "constant"))
    before = load_checkpoint(tmp_path / "student.pt")

    class Explode(methods.CE):
        def loss(self, *outputs):
            return {"loss": super().loss(*outputs)["loss"] * float("nan")}
    with pytest.raises(cli.UserError, match="non-finite loss .* step 1 of epoch 2"):
        train(parse(image_folder, tmp_path, "--resume", "--epochs", 2), Explode({}))
    after = load_checkpoint(tmp_path / "student.pt")
    assert after["epoch"] == 1
    assert all(torch.equal(before["model_state"][k], v) for k, v in after["model_state"].items())


def test_weights_made_non_finite_by_an_epochs_last_step_never_reach_a_checkpoint(
        image_folder, tmp_path):
    """The loss is read before each step: a finite loss whose gradient is NaN, on an epoch's
    last step, left NaN weights (and EMA) that were evaluated and saved as the checkpoint
    the next error called the last good one."""
    train(parse(image_folder, tmp_path, "--epochs", 1, "--schedule", "constant"))
    before = load_checkpoint(tmp_path / "student.pt")
    steps = 270 // 32  # per epoch

    class PoisonLastStep(methods.CE):
        calls = 0

        def loss(self, student, *rest):
            losses = super().loss(student, *rest)
            PoisonLastStep.calls += 1
            if PoisonLastStep.calls == steps:  # sqrt's gradient at 0 is inf, times 0: NaN
                losses["loss"] = losses["loss"] + (student.logits * 0).abs().sqrt().sum()
            return losses
    with pytest.raises(cli.UserError, match="non-finite .* epoch 2.*epoch 1\\) is kept"):
        train(parse(image_folder, tmp_path, "--resume", "--epochs", 2), PoisonLastStep({}))
    after = load_checkpoint(tmp_path / "student.pt")
    assert PoisonLastStep.calls == steps and after["epoch"] == 1
    assert all(torch.equal(before["model_state"][k], v) for k, v in after["model_state"].items())


def test_checkpoint_round_trip_and_atomic_write(tmp_path):
    ckpt = {"model": {"name": "student", "arch_args": {"widths": [8, 16]}},
            "model_state": {"w": torch.randn(3)}, "epoch": 2, "config": {"lr": 0.1, "x": None}}
    save_checkpoint(ckpt, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert torch.equal(loaded["model_state"]["w"], ckpt["model_state"]["w"])
    assert loaded["config"] == ckpt["config"] and loaded["epoch"] == 2


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_bad_checkpoint_files_are_rejected_clearly(tmp_path, content):
    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"something": "else"}, path)  # a valid torch file, but not ours
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_onecycle_schedule_shape():
    lrs = [lr_factor(s, 10, 0, 10, "onecycle", 0.2) for s in range(100)]
    peak = max(range(100), key=lrs.__getitem__)
    assert 18 <= peak <= 20 and lrs[0] > 0 and lrs[-1] < 0.02 and max(lrs) <= 1.0
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))
    assert lr_factor(150, 10, 10, 20, "onecycle", 0.2) > 0.5  # extension: a second cycle
    assert lr_factor(7, 10, 0, 10, "constant", 0.2) == 1.0


class LossAlone(methods.CE):  # loss() returns the tensor, not {"loss": ...}
    def loss(self, student, teacher, labels, positions):
        return super().loss(student, teacher, labels, positions)["loss"]


class TwoOutputs(methods.CE):  # forward() overridden, the scored labels left out
    def forward(self, student, images, labels, positions):
        return super().forward(student, images, labels, positions)[:2]


@pytest.mark.parametrize(("method", "says"), [
    (LossAlone, "LossAlone.loss returns Tensor, not a dict with a 'loss' entry"),
    (TwoOutputs, "TwoOutputs.forward returns 2 values, not 3")])
def test_a_method_breaking_the_loops_contract_is_refused_in_one_line(method, says):
    """A method kept outside the repository whose loss() or forward() returns what the loop
    does not take failed with a traceback deep in the loop."""
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)), None)]
    model = build_model("student")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    with pytest.raises(cli.UserError, match=re.escape(says)):
        engine.train_one_epoch(model, batches, method({}), optimizer, scheduler,
                               torch.device("cpu"))


def test_clip_grad_norm_bounds_each_step_and_is_off_at_zero():
    """Plain SGD at lr 1: a clipped step moves the weights by at most the clip norm."""
    torch.manual_seed(0)
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), None) for _ in range(3)]

    def one_epoch(clip):
        torch.manual_seed(1)
        model = build_model("student")
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        moved = []
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])

        def after_step():
            nonlocal before
            now = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
            moved.append((now - before).norm().item())
            before = now
        metrics = engine.train_one_epoch(model, batches, methods.CE({}), optimizer, scheduler,
                                         torch.device("cpu"), after_step=after_step,
                                         clip_grad_norm=clip)
        return model, metrics, moved

    free, free_metrics, free_moved = one_epoch(0.0)
    assert "clipped" not in free_metrics and min(free_moved) > 0.01
    _, metrics, moved = one_epoch(0.01)
    assert metrics["clipped"] == 1.0 and max(moved) <= 0.01 * (1 + 1e-4)
    loose, metrics, _ = one_epoch(1e9)  # never reached: the same steps as no clipping
    assert metrics["clipped"] == 0.0
    for a, b in zip(free.state_dict().values(), loose.state_dict().values()):
        assert torch.equal(a, b)


def test_an_extended_run_is_stale_for_a_command_that_asks_for_a_straight_one(image_folder,
                                                                            tmp_path):
    train(parse(image_folder, tmp_path, "--epochs", 1))
    train(parse(image_folder, tmp_path, "--resume", "--epochs", 2))
    ckpt = load_checkpoint(tmp_path / "student.pt")
    args = parse(image_folder, tmp_path, "--epochs", 2, "--resume", "--restart-if-changed")
    changes = runs.changed_recipe(ckpt["config"], args, (), torch.device("cpu"))
    assert changes == ["schedule_start_epoch 1 -> 0"]


def test_a_dry_run_is_current_for_the_command_that_made_it(image_folder, tmp_path):
    """A dry run trains 1 epoch whatever --epochs says; asked again with the same flags it
    was stale ("epochs 1 -> 3"), so --restart-if-changed started it over every time, and
    --resume extended it to 3 epochs."""
    flags = ["--dry-run", "--epochs", 3]
    train(parse(image_folder, tmp_path, *flags))
    ckpt = load_checkpoint(tmp_path / "student.pt")
    args = parse(image_folder, tmp_path, *flags, "--resume", "--restart-if-changed")
    assert runs.changed_recipe(ckpt["config"], args, (), torch.device("cpu")) == []
    train(parse(image_folder, tmp_path, *flags, "--resume", "--restart-if-changed"))
    assert load_checkpoint(tmp_path / "student.pt")["epoch"] == 1  # not extended to 3


def test_a_finished_run_tested_again_records_the_epoch_its_weights_are_from(image_folder,
                                                                           tmp_path):
    """--resume with fewer --epochs than a finished run has (it says so, and trains nothing)
    tests it when its test record is missing: the record names the checkpoint's epoch,
    which the tables match it by."""
    train(parse(image_folder, tmp_path, "--epochs", 2))
    run_id = load_checkpoint(tmp_path / "student.pt")["config"]["run_id"]
    test_record = tmp_path / "student.test.json"
    test_record.unlink()
    train(parse(image_folder, tmp_path, "--resume", "--epochs", 1))
    assert json.loads(test_record.read_text())["epoch"] == 2
    # under the run's own id, which the tables match its test record by
    assert json.loads(test_record.read_text())["run_id"] == run_id
    assert json.loads((tmp_path / "student.config.json").read_text())["run_id"] == run_id


def test_a_checkpoint_from_before_runs_recorded_their_data_resumes_with_a_note(
        image_folder, tmp_path, capsys):
    """It cannot be checked: a plain --resume continues it, saying so; --restart-if-changed
    (make, sweeps) counts it as changed and starts it over, recording its data."""
    out = tmp_path / "student.pt"
    train(parse(image_folder, tmp_path, "--epochs", 1))
    old = load_checkpoint(out)
    del old["config"]["data_identity"]
    save_checkpoint(old, out)
    train(parse(image_folder, tmp_path, "--resume", "--epochs", 2))
    assert "(it predates that); resuming unchecked" in capsys.readouterr().out
    resumed = load_checkpoint(out)
    assert resumed["epoch"] == 2 and len(resumed["history"]) == 2
    save_checkpoint(old, out)
    train(parse(image_folder, tmp_path, "--resume", "--restart-if-changed", "--epochs", 2))
    again = load_checkpoint(out)
    assert "data_identity" in again["config"] and again["config"]["run_id"] != \
        old["config"]["run_id"]


def test_a_finished_run_already_tested_is_not_tested_again(image_folder, tmp_path,
                                                           monkeypatch):
    train(parse(image_folder, tmp_path, "--epochs", 1))
    monkeypatch.setattr(engine, "test_and_record", lambda *_, **__: pytest.fail("tested"))
    train(parse(image_folder, tmp_path, "--resume", "--restart-if-changed", "--epochs", 1))


def test_a_resumed_optimizer_steps_with_the_kernels_its_device_chose():
    """A GPU run's fused steps are recorded in its optimizer state; resumed on a CPU, the
    run takes the CPU's default step, as make_optimizer chooses there (and the reverse)."""
    model = torch.nn.Linear(2, 2)
    on_gpu = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, fused=True)
    model(torch.ones(1, 2)).sum().backward()
    on_gpu.step()
    args = argparse.Namespace(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=0.0)
    on_cpu = make_optimizer(model.parameters(), args, "cpu")
    load_optimizer_state(on_cpu, on_gpu.state_dict())
    assert not on_cpu.param_groups[0]["fused"]
    assert torch.equal(on_cpu.state_dict()["state"][0]["momentum_buffer"],
                       on_gpu.state_dict()["state"][0]["momentum_buffer"])


def test_an_extended_constant_schedule_run_is_a_straight_one(image_folder, tmp_path):
    """A constant learning rate has no cycle to restart: extended, the run is what a run
    trained straight to that length is, so it keeps that recipe."""
    train(parse(image_folder, tmp_path, "--epochs", 1, "--schedule", "constant"))
    train(parse(image_folder, tmp_path, "--resume", "--epochs", 2))
    assert load_checkpoint(tmp_path / "student.pt")["schedule_start_epoch"] == 0


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_optimizer_flags_reach_the_optimizer(image_folder, tmp_path, optimizer):
    """--momentum and --weight-decay, set away from their defaults (0.9, 5e-4), are the
    optimizer's (Nesterov with any momentum; none at 0), in make_optimizer and in the
    optimizer a run trained and saved. Guards against SGD built with momentum=0.9 and
    weight_decay=0.0 whatever the flags."""
    model = build_model("student")
    for momentum, nesterov in ((0.5, True), (0.0, False)):
        args = parse(image_folder, tmp_path, "--optimizer", optimizer, "--momentum", momentum,
                     "--weight-decay", 0.01)
        group = make_optimizer(model.parameters(), args, "cpu").param_groups[0]
        assert group["weight_decay"] == 0.01 and group["lr"] == 0.05
        if optimizer == "sgd":
            assert group["momentum"] == momentum and group["nesterov"] == nesterov
        else:
            assert "momentum" not in group  # Adam has its betas, which no flag sets
    train(parse(image_folder, tmp_path, "--optimizer", optimizer, "--momentum", 0.5,
                "--weight-decay", 0.01, "--epochs", 1, "--train-subset", 64))
    [group] = load_checkpoint(tmp_path / "student.pt")["optimizer_state"]["param_groups"]
    assert group["weight_decay"] == 0.01
    assert group.get("momentum") == (0.5 if optimizer == "sgd" else None)


def loss_and_accuracy(model, images, labels):
    """Mean cross-entropy and % right of `model` on uint8 `images`, in one forward pass,
    without this repo's loaders or evaluate()."""
    with torch.no_grad():
        logits = model(images.float() / 255).double()
    return (F.cross_entropy(logits, labels).item(),
            100 * (logits.argmax(1) == labels).double().mean().item())


def test_the_ema_columns_and_test_record_measure_the_ema_model(image_folder, tmp_path):
    """ema_val_* (the last epoch's row) and ema_test_* (the test record) are the saved EMA
    model's numbers on the validation and test images, which differ from the raw model's.
    Guards against evaluate(model, ...) in place of evaluate(ema, ...), for either."""
    train(parse(image_folder, tmp_path, "--epochs", 2, "--ema-decay", 0.9))
    out = tmp_path / "student.pt"
    row = load_checkpoint(out)["history"][-1]
    record = json.loads((tmp_path / "student.test.json").read_text())
    data = load_cifar10(image_folder)
    val, test = split_train_val(data)[1], (data["test_images"], data["test_labels"])
    ema, raw = load_model(out, ema=True), load_model(out)
    for prefix, measured, images in (("ema_val", row, val), ("ema_test", record, test)):
        loss, acc = loss_and_accuracy(ema, *images)
        assert measured[f"{prefix}_loss"] == pytest.approx(loss, rel=1e-4), prefix
        assert measured[f"{prefix}_acc"] == pytest.approx(acc), prefix
        # the test can tell the EMA from the raw model (whose numbers are recorded beside)
        assert loss_and_accuracy(raw, *images)[0] != pytest.approx(loss, rel=1e-3), prefix


def test_a_resume_says_which_of_its_commands_settings_it_does_not_use(image_folder, tmp_path,
                                                                      capsys, monkeypatch):
    """--resume continues the run as recorded: a flag typed that differs (here --lr) is not
    used, and says so; a longer --epochs extends the run and is no such flag; a flag left
    at its default is not named (the run's non-default --train-subset, --batch-size)."""
    train(parse(image_folder, tmp_path, "--epochs", 1, "--train-subset", 64,
                "--batch-size", 16))
    capsys.readouterr()
    flags = ["--resume", "--epochs", "2", "--lr=0.5"]
    monkeypatch.setattr(sys, "argv", ["train_student.py", *flags])
    train(parse(image_folder, tmp_path, *flags))
    notes = [line for line in capsys.readouterr().out.splitlines() if "not used" in line]
    assert notes == [f"note: --resume continues {tmp_path / 'student.pt'} as recorded; this "
                     "command's settings not used (recorded -> given): lr 0.05 -> 0.5 "
                     "(--restart-if-changed would start it over with them)"]
    assert load_checkpoint(tmp_path / "student.pt")["config"]["lr"] == 0.05


def test_a_run_of_another_script_given_to_resume_says_so(image_folder, tmp_path):
    """train_ema.py --resume of a student that train_student.py trained (the same model)."""
    train(parse(image_folder, tmp_path, "--epochs", 1, "--train-subset", 64))
    with pytest.raises(CheckpointError, match=r"cannot be resumed by this script: its config "
                                              r"lacks 'mode', .* \(a run of another script\?\)"):
        run_in_process("train_ema.py", "--resume", "--out", tmp_path / "student.pt",
                       "--data-root", image_folder, "--plots-dir", tmp_path / "plots")


def test_a_bare_resume_of_a_run_with_its_own_widths_keeps_them(image_folder, tmp_path):
    """The model came back from the checkpoint at its widths, but args.widths stayed the
    command's (None): the config then recorded the default widths, and the next
    `--restart-if-changed --widths 16 48` (make's, the sweep's) found the run stale."""
    with pytest.raises(KeyboardInterrupt):  # 64 images / 32 = 2 steps per epoch: in epoch 2
        train(parse(image_folder, tmp_path, "--epochs", 2, "--train-subset", 64,
                    "--widths", 16, 48), interrupt_after(3))
    train(parse(image_folder, tmp_path, "--resume"))
    ckpt = load_checkpoint(tmp_path / "student.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["widths"] == [16, 48]
    current = runs.prepare_run(parse(image_folder, tmp_path, "--resume", "--restart-if-changed",
                                     "--epochs", 2, "--train-subset", 64, "--widths", 16, 48),
                               "student")[3]
    assert current is not None  # resumed as it is, not started over


def test_a_dry_run_is_capped_at_one_epoch_by_its_own_flag_not_the_commands(image_folder,
                                                                           tmp_path, capsys):
    """--resume restores --dry-run from the checkpoint, so the one-epoch cap must follow
    it: a dry run resumed without retyping --dry-run was extended; a real run resumed with
    a typed --dry-run (a flag not used, as the note says) was cut to one epoch and refused."""
    train(parse(image_folder, tmp_path, "--dry-run", name="dry"))
    capsys.readouterr()
    train(parse(image_folder, tmp_path, "--resume", "--epochs", 3, name="dry"))
    assert load_checkpoint(tmp_path / "dry.pt")["epoch"] == 1
    assert "is already complete (1 epoch); a dry run is one epoch, never extended" in \
        capsys.readouterr().out
    train(parse(image_folder, tmp_path, "--epochs", 1, "--train-subset", 64))
    train(parse(image_folder, tmp_path, "--resume", "--epochs", 2, "--dry-run"))
    assert load_checkpoint(tmp_path / "student.pt")["epoch"] == 2


def test_a_run_resumed_on_another_machine_records_both(image_folder, tmp_path, monkeypatch,
                                                       capsys):
    """Another CPU model rounds otherwise (docs/reliability.md): a run resumed on one is
    neither machine's straight run, yet its records named only the second, with no note."""
    from kd import device as device_module
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(device_module, "CPUINFO", cpuinfo)
    cpuinfo.write_text("model name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\n")
    first = device_module.machine_name(torch.device("cpu"))
    train(parse(image_folder, tmp_path, "--epochs", 1, "--train-subset", 64))
    cpuinfo.write_text("model name\t: AMD EPYC\ncpu family\t: 26\nmodel\t\t: 2\n")
    second = device_module.machine_name(torch.device("cpu"))
    capsys.readouterr()
    train(parse(image_folder, tmp_path, "--resume", "--epochs", 2))
    out = capsys.readouterr().out
    assert f"ran on {first} and continues on {second}" in out
    ckpt = load_checkpoint(tmp_path / "student.pt")
    assert [row["machine"] for row in ckpt["history"]] == [first, second]
    assert ckpt["config"]["machine"] == f"{first}, then {second}"
    capsys.readouterr()
    train(parse(image_folder, tmp_path, "--resume", "--epochs", 3))  # on the second again
    assert "continues on" not in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "student.pt")["config"]["machine"] == \
        f"{first}, then {second}"


def test_a_run_recorded_before_machines_named_their_cpu_family_is_not_said_to_move(
        image_folder, tmp_path, monkeypatch, capsys):
    """Records name the CPU's family and model numbers since commit e519480: a run from
    before, resumed on its own machine, was said to continue on another and its config
    named the one machine twice ("A, then A" in two spellings). Records that cannot tell
    are not called a move, nor given the family they did not record."""
    from kd import device as device_module
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(device_module, "CPUINFO", cpuinfo)
    cpuinfo.write_text("model name\t: AMD EPYC\n")  # the name as it was recorded then
    before = device_module.machine_name(torch.device("cpu"))
    train(parse(image_folder, tmp_path, "--epochs", 1, "--train-subset", 64))
    cpuinfo.write_text("model name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\n")
    now = device_module.machine_name(torch.device("cpu"))
    assert now != before
    capsys.readouterr()
    train(parse(image_folder, tmp_path, "--resume", "--epochs", 2))
    assert "continues on" not in capsys.readouterr().out
    # as precisely as the whole run's records allow; each epoch's row has its own spelling
    ckpt = load_checkpoint(tmp_path / "student.pt")
    assert ckpt["config"]["machine"] == before
    assert [row["machine"] for row in ckpt["history"]] == [before, now]
    assert runs.trained_on([{}, {}], before, now) == before
    other = now.replace("family 25, model 1", "family 26, model 2")
    assert runs.trained_on([{}], now, other) == f"{now}, then {other}"
    assert runs.trained_on([{}], before.replace("AMD EPYC", "Intel Xeon"), now) == \
        f"{before.replace('AMD EPYC', 'Intel Xeon')}, then {now}"


def test_a_run_resumed_with_another_compile_mode_says_so(image_folder, tmp_path, capsys):
    """--compile is no part of the recipe (the same arithmetic), but other kernels: a run
    resumed with another mode is not bit for bit the straight run, and said nothing."""
    with pytest.raises(KeyboardInterrupt):  # 64 images / 32 = 2 steps per epoch: in epoch 2
        train(parse(image_folder, tmp_path, "--epochs", 2, "--train-subset", 64),
              interrupt_after(3))
    capsys.readouterr()
    runs.prepare_run(parse(image_folder, tmp_path, "--resume", "--compile", "default"),
                     "student")
    assert (f"note: {tmp_path / 'student.pt'} ran with --compile None and continues with "
            "--compile default" in capsys.readouterr().out)
    runs.prepare_run(parse(image_folder, tmp_path, "--resume"), "student")
    assert "--compile" not in capsys.readouterr().out


def test_a_run_from_before_per_epoch_machines_is_not_named_twice():
    """Rows from before each epoch recorded its machine took the config's whole string,
    which after one resume elsewhere already named both: "A, then B, then B"."""
    assert runs.trained_on([{}, {"machine": "B"}], "A, then B", "B") == "A, then B"
    assert runs.trained_on([{}, {}], "A", "B") == "A, then B"
    assert runs.trained_on([], None, "A") == "A"
