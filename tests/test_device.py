"""Device and precision, checked on the CPU: what --precision means where, bf16 training with
fp32 evaluation, resuming on another device, and a training loop that never waits on the
device between its loss reads."""
import json
import os
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import methods
from conftest import run_script, synthetic_images
from kd import device as device_module
from kd import engine
from kd.checkpoints import load_checkpoint
from kd.cli import UserError
from kd.data import BatchLoader
from kd.device import (
    cpu_bf16_units,
    ieee_fp32,
    machine_name,
    peak_memory_mb,
    resolve_precision,
    select_device,
)
from kd.ema import ModelEMA
from kd.schedule import lr_factor
from models import build_model, load_model


@pytest.mark.parametrize("device, bf16_native, asked, expected", [
    ("cpu", False, "auto", "fp32"),
    ("cpu", False, "bf16", "bf16"),
    ("cpu", True, "auto", "bf16"),  # a CPU with AMX and AVX512_BF16
    ("cpu", True, "fp32", "fp32"),
    ("cuda", True, "auto", "bf16"),
    ("cuda", False, "auto", "fp32"),
    ("cuda", True, "fp32", "fp32"),
])
def test_what_precision_means_where(monkeypatch, device, bf16_native, asked, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: bf16_native)
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: bf16_native)
    assert resolve_precision(asked, torch.device(device)) == expected


@pytest.mark.parametrize("amx, avx512_bf16, units", [
    (True, True, ["AMX", "AVX512_BF16"]), (False, True, ["AVX512_BF16"]),
    (True, None, ["AMX"]), (False, False, []), (None, None, [])])  # None: the probe is absent
def test_cpu_bf16_units_and_auto(monkeypatch, amx, avx512_bf16, units):
    for probe, present in (("_is_amx_tile_supported", amx),
                           ("_is_avx512_bf16_supported", avx512_bf16)):
        if present is None:
            monkeypatch.delattr(torch.cpu, probe, raising=False)
        else:
            monkeypatch.setattr(torch.cpu, probe, lambda present=present: present)
    assert cpu_bf16_units() == units
    assert resolve_precision("auto", torch.device("cpu")) == ("bf16" if units else "fp32")


@pytest.mark.skipif(not hasattr(torch.backends.cudnn, "conv"), reason="torch before 2.9")
def test_fp32_settings_leave_the_legacy_cudnn_flag_readable():
    """inductor's conv templates (--compile max-autotune on a GPU) read
    torch.backends.cudnn.allow_tf32, which raised once the new API alone had set the conv
    precision ("a mix of the legacy and new APIs"). The settings are global: put back."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = torch.backends.cudnn.allow_tf32, matmul.fp32_precision
    try:
        ieee_fp32()
        assert torch.backends.cudnn.allow_tf32 is False
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    finally:
        torch.backends.cudnn.allow_tf32, matmul.fp32_precision = before


def test_bf16_on_a_gpu_without_it_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla V100")
    with pytest.raises(UserError, match="V100 has no native bf16"):
        resolve_precision("bf16", torch.device("cuda"))


def tiny_loader(n=96, batch_size=16, seed=0):
    images, labels = synthetic_images(n // 10 + 1, seed)
    return BatchLoader(images[:n], labels[:n], batch_size, shuffle=True, augment=True,
                       drop_last=True, positions=True)


def test_the_training_accuracy_is_scored_against_the_labels_the_method_gives():
    """A method that scores every batch against the model's own predictions: 100%, however
    far the batch's labels are from them (the loop scored the loader's labels)."""
    torch.manual_seed(0)
    model = build_model("student")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    ce = methods.CE({})

    def method(model, *batch):
        logits, parts, _ = ce(model, *batch)
        return logits, parts, logits.argmax(1)
    metrics = engine.train_one_epoch(model, tiny_loader(), method, optimizer, scheduler,
                                     torch.device("cpu"), "fp32")
    assert metrics["acc"] == 100.0


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_training_steps_run_in_the_precision_asked_for(precision, dtype):
    torch.manual_seed(0)
    model = build_model("student").to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    seen = []

    ce = methods.CE({})

    def method(model, *batch):
        logits, parts, scored = ce(model, *batch)
        seen.append(logits.dtype)
        return logits, parts, scored
    metrics = engine.train_one_epoch(model, tiny_loader(), method, optimizer, scheduler,
                                     torch.device("cpu"), precision)
    assert set(seen) == {dtype} and len(seen) == 6
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32


class HostReads(TorchFunctionMode):
    """Records every call that copies a tensor's value to the host: on a GPU, each one waits
    for all the kernels queued before it."""
    READS = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "numpy", "cpu"}

    def __init__(self):
        super().__init__()
        self.reads = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in self.READS:
            self.reads[func.__name__] += 1
        return func(*args, **(kwargs or {}))


def test_the_loop_reads_values_on_the_host_only_every_sync_every_steps():
    """A KD step with an EMA update, SGD and the LR schedule, as on a GPU (sync_every 5):
    the loss is read at steps 1, 6 and 11 and the epoch's sums once at the end, nothing
    else (AveragedModel.update_parameters alone would read its count twice per step)."""
    torch.manual_seed(0)
    teacher = build_model("teacher").eval().requires_grad_(False)
    student = build_model("student")
    ema = ModelEMA(student, 0.9)
    method = methods.build({"loss": "kd+ce"}, teacher)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, 12, 0, 1, "onecycle", 0.2))
    loader = tiny_loader(n=12 * 8, batch_size=8)
    with HostReads() as mode:
        engine.train_one_epoch(student, loader, method, optimizer, scheduler,
                               torch.device("cpu"), after_step=lambda: ema.update_parameters(
                                   student), sync_every=5)
    # 3 loss reads, then the sums of loss, accuracy and the two logged parts (kd, ce)
    assert mode.reads == Counter(item=3 + 4)
    assert ema.updates == 12


def test_evaluation_is_fp32_after_bf16_training(teacher_checkpoint, image_folder, tmp_path):
    out = tmp_path / "student.pt"
    run_script("train_student.py", "--dry-run", "--precision", "bf16", "--teacher",
               teacher_checkpoint, "--data-root", image_folder, "--out", out, "--plots-dir",
               tmp_path)
    assert json.loads((tmp_path / "student.config.json").read_text())["precision"] == "bf16"
    # The recorded test loss and accuracy are the fp32 model's: an independent fp32 forward
    # agrees to float rounding (bf16 would differ in the third digit).
    images, labels = synthetic_images(5, seed=1)  # the fixture's test split, lossless PNGs
    with torch.no_grad():
        logits = load_model(out)(images.float() / 255)
    test = json.loads((tmp_path / "student.test.json").read_text())
    assert test["test_loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    correct = (logits.argmax(1) == labels).sum().item()
    assert test["test_acc"] == pytest.approx(100 * correct / len(labels))


def test_resume_keeps_the_precision_and_records_a_change_of_device(image_folder, tmp_path):
    out = tmp_path / "student.pt"
    common = ["--loss", "ce", "--data-root", image_folder, "--out", out, "--plots-dir", tmp_path,
              "--batch-size", "32", "--train-subset", "64"]
    run_script("train_student.py", *common, "--epochs", "1", "--precision", "bf16")
    # As if the first epoch had run on a GPU: resuming on the CPU says so and records it.
    ckpt = load_checkpoint(out)
    ckpt["config"]["device"] = ckpt["history"][0]["device"] = "cuda"
    torch.save(ckpt, out)
    proc = run_script("train_student.py", *common, "--resume", "--epochs", "2",
                      "--precision", "fp32")
    assert "ran on cuda and continues on cpu" in proc.stdout
    ckpt = load_checkpoint(out)
    assert ckpt["config"]["precision"] == "bf16"  # a recipe key: the checkpoint's, not the flag
    assert [row["device"] for row in ckpt["history"]] == ["cuda", "cpu"]


def test_a_checkpoint_from_before_precision_resumes_in_fp32(image_folder, tmp_path):
    out = tmp_path / "student.pt"
    common = ["--loss", "ce", "--data-root", image_folder, "--out", out, "--plots-dir", tmp_path,
              "--batch-size", "32", "--train-subset", "64"]
    run_script("train_student.py", *common, "--epochs", "1")
    ckpt = load_checkpoint(out)
    del ckpt["config"]["precision"]
    torch.save(ckpt, out)
    run_script("train_student.py", *common, "--resume", "--epochs", "2")
    assert load_checkpoint(out)["config"]["precision"] == "fp32"


def test_cuda_fp32_is_ieee_through_the_fp32_precision_settings(monkeypatch):
    """On torch 2.9 and later the fp32_precision settings, not the allow_tf32 setters (which
    warn there on CUDA): checked on the CPU with CUDA pretended, the settings restored after."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    before = matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.benchmark
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    try:
        assert select_device("cuda").type == "cuda"
        # (the allow_tf32 setters would leave conv's at "none", inherited from cudnn's)
        assert (matmul.fp32_precision, cudnn.conv.fp32_precision) == ("ieee", "ieee")
        assert cudnn.benchmark
    finally:
        matmul.fp32_precision, cudnn.conv.fp32_precision, cudnn.benchmark = before


def test_the_machine_of_a_record_tells_cpu_generations_apart(tmp_path, monkeypatch):
    """A virtual machine's CPU is often named "AMD EPYC" alone, so a Zen 4 and a Zen 5 (the
    same bf16 units) were recorded alike, while their runs' numbers differ (docs/results.md:
    a Zen 3 against a Zen 5); their family and model numbers tell them apart."""
    names = []
    for model in (17, 2):
        cpuinfo = tmp_path / f"cpuinfo{model}"
        cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n"
                           f"model\t\t: {model}\nmodel name\t: AMD EPYC\n")
        monkeypatch.setattr(device_module, "CPUINFO", cpuinfo)
        names.append(machine_name(torch.device("cpu")))
    assert names[1].startswith("AMD EPYC (family 26, model 2; ") and names[0] != names[1]
    monkeypatch.setattr(device_module, "CPUINFO", tmp_path / "none")  # not Linux
    assert "family" not in machine_name(torch.device("cpu"))


def test_the_peak_memory_is_the_process_peak_in_mb():
    """The peak so far is about the resident set now, read from /proc, or above it (the
    kernel's counters behind getrusage lag /proc's by some MB), and within the machine's
    memory: a peak in the wrong unit (getrusage gives KiB on Linux, bytes on macOS) would be
    1,024 times off one way or the other."""
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("no /proc to read the resident set from")
    held = torch.ones(64, 2**20, dtype=torch.uint8)  # 64 MiB touched: the peak is at least it
    rss_kib = next(int(line.split()[1]) for line in status.read_text().splitlines()
                   if line.startswith("VmRSS:"))
    peak = peak_memory_mb(torch.device("cpu"))
    assert set(peak) == {"peak_memory_mb"}
    machine_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    assert rss_kib / 1024 / 2 < peak["peak_memory_mb"] < machine_mb
    del held
