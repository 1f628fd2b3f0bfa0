"""EMA: the update rule, BatchNorm buffers, checkpoints and train_ema.py from the shell."""
import pytest
import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn

from conftest import run_in_process, run_script
from kd.checkpoints import CheckpointError, load_checkpoint
from kd.ema import ModelEMA
from models import StudentNet, load_model


def step(model, seed):
    """Stand-in for an optimizer step: new weights and new BatchNorm statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    model.train()(torch.rand(8, 3, 32, 32, generator=g))  # updates BN running stats


def tensors(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_first_update_copies_and_decay_zero_follows_the_model():
    torch.manual_seed(0)
    model, start = StudentNet(), StudentNet()
    ema = ModelEMA(start, decay=0.0)
    for i in range(3):
        step(model, i)
        ema.update_parameters(model)
        for k, v in model.state_dict().items():
            assert torch.equal(ema.module.state_dict()[k], v), (i, k)


def test_after_k_updates_the_ema_is_the_stated_warm_up():
    """A reference computed by hand for the warm-up min(1 - 1/(n + 1), decay): with decay
    0.75 the first 4 updates (n = 0..3) average the 4 models seen, every later one moves the
    EMA a quarter of the way to the model, so the decay matters from update 4 on."""
    model = StudentNet()
    ema = ModelEMA(StudentNet(), decay=0.75)
    seen, after_four = [], None
    for i in range(6):
        step(model, i)
        ema.update_parameters(model)
        seen.append(tensors(model))
        if i == 3:
            after_four = tensors(ema.module)
    for key in ("features.0.0.weight", "features.0.1.running_mean"):  # a weight, a BN buffer
        w = [s[key].double() for s in seen]
        mean4 = (w[0] + w[1] + w[2] + w[3]) / 4
        assert torch.allclose(after_four[key].double(), mean4, atol=1e-5), key
        expected = 0.75 * (0.75 * mean4 + 0.25 * w[4]) + 0.25 * w[5]
        assert torch.allclose(ema.module.state_dict()[key].double(), expected, atol=1e-5), key
    assert ema.updates == 6 and [ema.decay_at(n) for n in (0, 1, 3, 100)] == [0, 0.5, 0.75, 0.75]


@pytest.mark.parametrize("flags", [[], ["--no-ema"], ["--ema-decay", "0"]])
def test_dry_run_of_each_mean_teacher_setting(image_folder, tmp_path, flags):
    out = tmp_path / "ema_run.pt"
    proc = run_script("train_ema.py", "--dry-run", "--batch-size", "64", *flags,
                      "--data-root", image_folder, "--out", out, "--plots-dir", tmp_path)
    assert "EMA val acc" in proc.stdout
    header = (tmp_path / "ema_run.metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "ema_val_loss",
            "ema_val_acc"} <= set(header)
    ckpt = load_checkpoint(out)
    raw, ema = load_model(out), load_model(out, ema=True)
    assert ckpt["ema"]["updates"] == (0 if "--no-ema" in flags else 2)
    same = all(torch.equal(a, b) for a, b in zip(raw.state_dict().values(),
                                                 ema.state_dict().values()))
    assert same == ("0" in flags)  # decay 0: the teacher is the student; else its own model
    assert (tmp_path / "ema_compare.png").is_file()


def test_ema_state_survives_an_interrupt_and_resume(image_folder, tmp_path):
    """In this process (a real signal's interruption has its tests in test_reliability.py):
    4 steps an epoch, interrupted after step 6 (checks: 4 steps, epoch 1's end, 2 steps)."""
    flags = ["--epochs", "3", "--batch-size", "16", "--train-subset", "64", "--data-root",
             image_folder, "--plots-dir", tmp_path]
    full, cut = tmp_path / "full.pt", tmp_path / "cut.pt"
    run_in_process("train_ema.py", *flags, "--out", full)
    with pytest.raises(KeyboardInterrupt):
        run_in_process("train_ema.py", *flags, "--out", cut, interrupt_at=4 + 1 + 2)
    assert load_checkpoint(cut)["epoch"] == 1
    run_in_process("train_ema.py", *flags, "--out", cut, "--resume")
    full, again = load_checkpoint(full), load_checkpoint(cut)
    assert full["ema"]["updates"] == again["ema"]["updates"] == 3 * (64 // 16)
    assert all(torch.equal(v, again["model_state"][k]) for k, v in full["model_state"].items())
    assert all(torch.equal(v, again["ema"]["model_state"][k])
               for k, v in full["ema"]["model_state"].items())


def test_bad_ema_flags(image_folder, tmp_path):
    for flags, fragment in ((["--ema-decay", "1"], "--ema-decay"),
                            (["--no-ema", "--ema-decay", "0"], "--no-ema")):
        proc = run_script("train_ema.py", "--dry-run", "--data-root", image_folder, "--out",
                          tmp_path / "e.pt", *flags, check=False)
        assert proc.returncode == 2 and fragment in proc.stderr.strip().splitlines()[-1]
    run_in_process("train_student.py", "--dry-run", "--loss", "ce", "--ema-decay", "0",
                   "--data-root", image_folder, "--out", tmp_path / "s.pt", "--plots-dir",
                   tmp_path)
    with pytest.raises(CheckpointError, match="no EMA model"):
        load_model(tmp_path / "s.pt", ema=True)


class ListEveryStepEMA(ModelEMA):
    """The update as it was before the tensor lists were kept: listed and filtered every step,
    the integer buffers averaged one by one (AveragedModel's get_ema_multi_avg_fn)."""

    @torch.no_grad()
    def update_parameters(self, model):
        ema_tensors = [*self.module.parameters(), *self.module.buffers()]
        model_tensors = [t.detach() for t in (*model.parameters(), *model.buffers())]
        if self.updates == 0:
            for e, m in zip(ema_tensors, model_tensors):
                e.copy_(m)
        else:
            average = get_ema_multi_avg_fn(self.decay_at(self.updates))
            for floating in (True, False):
                pairs = [(e, m) for e, m in zip(ema_tensors, model_tensors)
                         if e.is_floating_point() == floating]
                average(*map(list, zip(*pairs)), None)
        self.updates += 1
        self.n_averaged += 1


def bits(module):
    return {k: v.view(torch.int32) if v.is_floating_point() else v
            for k, v in module.state_dict().items()}


def test_the_kept_lists_update_the_ema_bit_for_bit_as_before():
    """Weights, BatchNorm statistics and batch counts (the integer path), through the warm-up
    and past it, with a batch count that makes e * d + m * (1 - d) round (it truncates)."""
    torch.manual_seed(0)
    model = StudentNet()
    ours, before = ModelEMA(StudentNet(), 0.75), ListEveryStepEMA(StudentNet(), 0.75)
    for i in range(7):
        step(model, i)
        if i == 4:
            for module in model.modules():
                if hasattr(module, "num_batches_tracked"):
                    module.num_batches_tracked.add_(1001)
        ours.update_parameters(model)
        before.update_parameters(model)
        a, b = bits(ours.module), bits(before.module)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b), i
    assert int(ours.module.state_dict()["features.0.1.num_batches_tracked"]) > 7


def test_the_kept_lists_follow_a_model_loaded_or_relaid_out_and_an_ema_moved():
    """decay 0: after each update the EMA is the model, also when the model's weights were
    loaded (load_state_dict copies into them), when .to() gave them another layout (it sets
    their data) and when the EMA's own tensors were replaced (as .to() another device does)."""
    torch.manual_seed(0)
    model = StudentNet()
    ema = ModelEMA(StudentNet(), decay=0.0)
    changes = [lambda: None, lambda: model.load_state_dict(StudentNet().state_dict()),
               lambda: model.to(memory_format=torch.channels_last),
               lambda: ema._apply(torch.clone)]
    for i, change in enumerate(changes):
        change()
        step(model, i)
        ema.update_parameters(model)
        for k, v in model.state_dict().items():
            assert torch.equal(ema.module.state_dict()[k], v), (i, k)
