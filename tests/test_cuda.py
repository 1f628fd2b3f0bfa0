"""The GPU path, run only where CUDA is available (marked `cuda`; skipped elsewhere): every
script on CUDA, checkpoints handed between CUDA and the CPU, the same batches on both, and
KD and EMA steps on the device that never wait for it between loss reads."""
import argparse
import json
import warnings

import pandas as pd
import pytest
import torch

import methods
from benchmarks import throughput
from conftest import run_script, synthetic_images
from kd import engine
from kd.checkpoints import load_checkpoint
from kd.data import BatchLoader
from kd.device import select_device
from kd.ema import ModelEMA
from kd.schedule import load_optimizer_state, make_optimizer
from losses import ContrastMemory
from models import build_model

pytestmark = pytest.mark.cuda
CUDA = ["--device", "cuda"]


@pytest.fixture(scope="module")
def cuda_teacher(image_folder, tmp_path_factory):
    """A finished (dry-run) teacher trained and saved on CUDA."""
    out = tmp_path_factory.mktemp("cuda") / "teacher.pt"
    run_script("train_teacher.py", "--dry-run", *CUDA, "--data-root", image_folder, "--out", out,
               "--plots-dir", out.parent)
    return out


def test_a_teacher_saved_on_cuda_loads_anywhere(cuda_teacher):
    ckpt = load_checkpoint(cuda_teacher)  # map_location: the CPU
    assert ckpt["config"]["device"] == "cuda" and ckpt["history"][0]["device"] == "cuda"
    expected = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32"
    assert ckpt["config"]["precision"] == expected
    assert all(t.device.type == "cpu" for t in ckpt["model_state"].values())


@pytest.mark.parametrize("loss", methods.METHODS)
def test_students_train_on_cuda_from_the_cuda_teacher(cuda_teacher, image_folder, tmp_path, loss):
    out = tmp_path / f"student_{loss}_seed0.pt"
    proc = run_script("train_student.py", "--dry-run", *CUDA, "--loss", loss, "--teacher",
                      cuda_teacher, "--data-root", image_folder, "--out", out, "--plots-dir",
                      tmp_path)
    assert "on cuda" in proc.stdout and load_checkpoint(out)["epoch"] == 1


def test_the_cuda_graph_path_trains_a_student_like_the_eager_one(cuda_teacher, image_folder,
                                                                 tmp_path, monkeypatch):
    """--compile reduce-overhead (forward and backward replayed as CUDA graphs): a KD student
    trains for 2 epochs of 4 steps, fp32, and ends where the eager run ends up to the
    arithmetic a compiled graph reorders (its validation loss within 1%). Every graph is
    captured: Inductor would otherwise run one it cannot capture without CUDA graphs and
    only warn (an error where torch reads TORCHINDUCTOR_CUDAGRAPH_OR_ERROR)."""
    monkeypatch.setenv("TORCHINDUCTOR_CUDAGRAPH_OR_ERROR", "1")
    flags = ["--loss", "kd", "--epochs", "2", "--batch-size", "16", "--train-subset", "64",
             "--precision", "fp32", "--skip-test", *CUDA, "--teacher", cuda_teacher,
             "--data-root", image_folder, "--plots-dir", tmp_path]
    run_script("train_student.py", *flags, "--out", tmp_path / "eager.pt")
    proc = run_script("train_student.py", *flags, "--compile", "reduce-overhead",
                      "--out", tmp_path / "graphs.pt")
    assert "skipping cudagraphs" not in proc.stderr
    eager, graphs = (load_checkpoint(tmp_path / f"{n}.pt")["history"] for n in ("eager", "graphs"))
    assert len(graphs) == 2
    assert graphs[-1]["val_loss"] == pytest.approx(eager[-1]["val_loss"], rel=0.01)


@pytest.mark.parametrize("flags", [[], ["--no-ema"], ["--ema-decay", "0"]])
def test_ema_runs_on_cuda(image_folder, tmp_path, flags):
    out = tmp_path / "ema.pt"
    # batch 64, as its CPU twin (test_ema.py): the dry run's 2 steps; at the default 256 the
    # synthetic set gives one (drop_last)
    proc = run_script("train_ema.py", "--dry-run", "--batch-size", "64", *CUDA, *flags,
                      "--data-root", image_folder, "--out", out, "--plots-dir", tmp_path)
    assert "EMA val acc" in proc.stdout
    assert load_checkpoint(out)["ema"]["updates"] == (0 if "--no-ema" in flags else 2)


def test_cuda_checkpoints_evaluate_on_the_cpu_as_on_cuda(cuda_teacher, image_folder, tmp_path):
    student = tmp_path / "student_kd+ce_seed0.pt"
    run_script("train_student.py", "--dry-run", *CUDA, "--teacher", cuda_teacher, "--data-root",
               image_folder, "--out", student, "--plots-dir", tmp_path)
    results = {}
    for device in ("cpu", "cuda"):
        run_script("evaluate.py", cuda_teacher, student, "--device", device, "--data-root",
                   image_folder, "--plots-dir", tmp_path / device)
        results[device] = pd.read_csv(tmp_path / device / "results.csv")
    # Both evaluate in fp32: the same predictions, up to a rare flip between cuDNN and
    # oneDNN rounding on a near-tie of these barely trained models (an image in 50 is 2
    # points; bf16 evaluation would flip many).
    for a, b in zip(results["cpu"]["test_acc"], results["cuda"]["test_acc"]):
        assert abs(a - b) <= 4
    recorded = json.loads(cuda_teacher.with_suffix(".test.json").read_text())["test_acc"]
    teacher_row = results["cuda"][results["cuda"]["model"] == "teacher"].iloc[0]
    assert abs(teacher_row["test_acc"] - recorded) <= 4


def test_a_cpu_checkpoint_resumes_on_cuda(image_folder, tmp_path):
    out = tmp_path / "student.pt"
    # fp32 pinned: auto is bf16 on a CPU with AMX or AVX512_BF16, as most GPU hosts have
    common = ["--loss", "ce", "--batch-size", "64", "--precision", "fp32", "--data-root",
              image_folder, "--out", out, "--plots-dir", tmp_path]
    run_script("train_student.py", *common, "--epochs", "1", "--device", "cpu")
    proc = run_script("train_student.py", *common, "--resume", "--epochs", "2", *CUDA)
    assert "ran on cpu and continues on cuda" in proc.stdout
    ckpt = load_checkpoint(out)
    assert [row["device"] for row in ckpt["history"]] == ["cpu", "cuda"]
    assert ckpt["config"]["precision"] == "fp32"  # the run's own, kept across devices
    # the GPU's peak only where the epoch ran there; a 256-wide student holds some MB
    assert "cuda_peak_memory_mb" not in ckpt["history"][0]
    assert 0 < ckpt["history"][1]["cuda_peak_memory_mb"] < 1024


def test_the_batches_are_the_same_on_cpu_and_cuda():
    images, labels = synthetic_images(10, seed=0)
    cpu, gpu = (BatchLoader(images, labels, 16, device, shuffle=True, augment=True, seed=3,
                            drop_last=True) for device in ("cpu", "cuda"))
    for epoch in (0, 1):
        cpu.set_epoch(epoch)
        gpu.set_epoch(epoch)
        for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(cpu, gpu):
            assert torch.equal(x_cpu, x_gpu.cpu()) and torch.equal(y_cpu, y_gpu.cpu())


@pytest.mark.parametrize("config", [{"loss": "kd+ce"}, {"loss": "kd", "mixup": True},
                                    {"loss": "kd", "cutmix": True},
                                    {"loss": "kd", "mixup": True, "mix_per_batch": True}])
def test_kd_and_ema_steps_on_cuda_wait_for_the_device_only_at_loss_reads(config):
    """Mixing draws on the CPU each step: its draws reach the GPU without waiting for it."""
    device = select_device("cuda")
    torch.manual_seed(0)
    teacher = build_model("teacher").to(device, memory_format=torch.channels_last).eval()
    student = build_model("student").to(device, memory_format=torch.channels_last)
    ema = ModelEMA(student, 0.99)
    method = methods.build(config, teacher.requires_grad_(False)).to(device)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    images, labels = synthetic_images(20, seed=0)
    batches = list(BatchLoader(images, labels, 10, device, shuffle=True, augment=True,
                               drop_last=True, positions=True))  # 20, made before the check

    def epoch():
        return engine.train_one_epoch(student, batches, method, optimizer, scheduler, device,
                                      "bf16", after_step=lambda: ema.update_parameters(student),
                                      sync_every=1000)
    epoch()  # warm-up: cuDNN's algorithm search, lazy initialisation
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            metrics = epoch()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    # The first step's loss read and the epoch's sums (loss, accuracy, kd, ce): 5, against
    # at least 2 per step (40) if the EMA update read its count on the host.
    assert len(syncs) < 10, [str(w.message) for w in syncs[:3]]
    assert ema.updates == 40 and torch.isfinite(torch.tensor(metrics["loss"]))


def test_crd_draws_its_negatives_on_the_device_and_resumes_them_there(tmp_path):
    """CRD on CUDA: the negatives come from a generator on the banks' device (other classes
    only, no host copy), and a memory restored from the saved state_dict (loaded on the
    CPU, then moved) draws on CUDA what the uninterrupted one draws."""
    labels = torch.arange(50) % 5
    first = ContrastMemory(labels, k=64, dim=8, seed=1).cuda()
    index = torch.arange(16, device="cuda")
    first.draw_contrast_index(index)
    torch.save(first.state_dict(), tmp_path / "crd.pt")
    resumed = ContrastMemory(labels, k=64, dim=8, seed=2)
    resumed.load_state_dict(torch.load(tmp_path / "crd.pt", map_location="cpu",
                                       weights_only=True))
    resumed.cuda()
    drawn, again = first.draw_contrast_index(index), resumed.draw_contrast_index(index)
    assert drawn.device.type == "cuda" and torch.equal(drawn, again)
    labels = labels.cuda()
    assert (labels[drawn[:, 1:]] != labels[index][:, None]).all()


def test_benchmark_runs_on_cuda(image_folder):
    proc = run_script("benchmarks/throughput.py", *CUDA, "--data-root", image_folder,
                      "--rounds", "1", "--batches", "1", "--profile")
    assert "student: train, tutorial pipeline" in proc.stdout
    assert "bf16 matmul" in proc.stdout or "fp32 matmul" in proc.stdout
    # teacher, student and KD steps, then each feature method's (all kinds by default)
    assert proc.stdout.count("where a training step's time goes") == 3 + len(
        throughput.FEATURE_METHODS)


@pytest.mark.cuda
def test_a_cpu_adam_state_resumes_into_fused_steps_on_cuda():
    """Adam's step count goes where the fused CUDA step wants it (torch places it by the
    group's `fused` flag when loading), so the first resumed step runs."""
    model = torch.nn.Linear(2, 2)
    args = argparse.Namespace(optimizer="adam", lr=0.1, weight_decay=0.0, momentum=0.0)
    on_cpu = make_optimizer(model.parameters(), args, "cpu")
    model(torch.ones(1, 2)).sum().backward()
    on_cpu.step()
    model = model.cuda()
    on_gpu = make_optimizer(model.parameters(), args, "cuda")
    load_optimizer_state(on_gpu, on_cpu.state_dict())
    assert on_gpu.param_groups[0]["fused"]
    model(torch.ones(1, 2, device="cuda")).sum().backward()
    on_gpu.step()
    assert on_gpu.state_dict()["state"][0]["step"].item() == 2
