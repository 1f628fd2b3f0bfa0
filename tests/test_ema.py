"""EMA: the update rule, BatchNorm buffers, checkpoints and train_ema.py from the shell."""
import pytest
import torch

from ema import ModelEMA
from checkpoints import CheckpointError, load_checkpoint
from conftest import full_and_resumed_runs, run_script
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


def test_decay_one_keeps_the_first_copy():
    model = StudentNet()
    ema = ModelEMA(StudentNet(), decay=1.0)
    step(model, 0)
    ema.update_parameters(model)
    first = tensors(ema.module)
    for i in range(1, 4):
        step(model, i)
        ema.update_parameters(model)
    assert all(torch.equal(first[k], v) for k, v in ema.module.state_dict().items())


def test_warm_up_then_decay_and_batchnorm_buffers_are_averaged():
    model = StudentNet()
    ema = ModelEMA(StudentNet(), decay=0.9)
    step(model, 0)
    ema.update_parameters(model)  # update 0: a copy
    previous = tensors(ema.module)
    step(model, 1)
    ema.update_parameters(model)  # update 1: decay min(0.9, 2/11)
    d = 2 / 11
    for k, v in model.state_dict().items():
        expected = d * previous[k].double() + (1 - d) * v.double()
        if v.is_floating_point():  # weights and BN running mean/var alike
            assert torch.allclose(ema.module.state_dict()[k].double(), expected, atol=1e-5), k
    bn_mean = "features.0.1.running_mean"
    assert not torch.equal(ema.module.state_dict()[bn_mean], model.state_dict()[bn_mean])
    for _ in range(200):
        ema.update_parameters(model)
    assert torch.allclose(ema.module.state_dict()["features.0.0.weight"],
                          model.state_dict()["features.0.0.weight"], atol=1e-4)


@pytest.mark.parametrize("flags", [["--mode", "mean-teacher"], ["--mode", "mean-teacher",
                                   "--no-ema"], ["--mode", "model-ema"]])
def test_dry_run_of_each_mode(teacher_checkpoint, image_folder, tmp_path, flags):
    out = tmp_path / "ema_run.pt"
    proc = run_script("train_ema.py", "--dry-run", "--batch-size", "64", *flags, "--teacher",
                      teacher_checkpoint,
                      "--data-root", image_folder, "--out", out, "--plots-dir", tmp_path)
    assert "EMA val acc" in proc.stdout
    header = (tmp_path / "ema_run.metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "ema_val_loss",
            "ema_val_acc"} <= set(header)
    ckpt = load_checkpoint(out)
    raw, ema = load_model(out), load_model(out, ema=True)
    assert ckpt["ema"]["updates"] == (0 if "--no-ema" in flags else 2)
    moved = any(not torch.equal(a, b) for a, b in zip(raw.state_dict().values(),
                                                      ema.state_dict().values()))
    assert moved  # the EMA is a model of its own
    assert (tmp_path / "ema_compare.png").is_file()


def test_ema_state_survives_an_interrupt_and_resume(image_folder, tmp_path):
    flags = ["--mode", "mean-teacher", "--epochs", "3", "--batch-size", "16", "--data-root",
             image_folder, "--plots-dir", tmp_path]
    full, cut = full_and_resumed_runs("train_ema.py", flags, tmp_path, epochs=3,
                                      step=16 + 8)  # mid-epoch 2
    full, again = load_checkpoint(full), load_checkpoint(cut)
    assert full["ema"]["updates"] == again["ema"]["updates"] == 3 * (270 // 16)
    assert all(torch.equal(v, again["model_state"][k]) for k, v in full["model_state"].items())
    assert all(torch.equal(v, again["ema"]["model_state"][k])
               for k, v in full["ema"]["model_state"].items())


def test_bad_ema_flags(image_folder, tmp_path):
    for flags, fragment in ((["--ema-decay", "1.5"], "--ema-decay"),
                            (["--mode", "model-ema", "--no-ema"], "--no-ema")):
        proc = run_script("train_ema.py", "--dry-run", "--data-root", image_folder, "--out",
                          tmp_path / "e.pt", *flags, check=False)
        assert proc.returncode == 2 and fragment in proc.stderr.strip().splitlines()[-1]
    run_script("train_student.py", "--dry-run", "--loss", "ce", "--data-root", image_folder,
               "--out", tmp_path / "s.pt", "--plots-dir", tmp_path)
    with pytest.raises(CheckpointError, match="no EMA model"):
        load_model(tmp_path / "s.pt", ema=True)
