"""benchmarks/throughput.py runs end to end on a small set (its numbers are not checked:
timing belongs to the benchmark, not to the tests)."""
from types import SimpleNamespace

import torch

from benchmarks.throughput import self_time_by_group
from conftest import run_script
from kd.device import resolve_precision


def test_benchmark_prints_every_row(image_folder):
    proc = run_script("benchmarks/throughput.py", "--data-root", image_folder, "--rounds", "1",
                      "--batches", "1", "--profile")
    # the step in the other precision beside the default's
    other = {"fp32": "bf16", "bf16": "fp32"}[resolve_precision("auto", torch.device("cpu"))]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")][1:]
    names = [row.split("|")[1].strip() for row in rows]
    for kind in ("teacher", "student"):
        for variant in ("train", "train, tutorial pipeline", "data + augmentation only",
                        "inference", f"train, {other}"):
            assert f"{kind}: {variant}" in names
    assert "student: KD train (teacher forward included)" in names
    assert "student: train, KD with shared teacher logits" in names
    assert "teacher: train, EMA of the weights" in names
    assert "peak memory of training steps" in proc.stdout
    assert "bf16 units: " in proc.stdout and "peak: bf16 3x3 conv" not in names  # machine, peaks
    assert "bf16 3x3 conv" in proc.stdout and "fp32 3x3 conv" in proc.stdout

    # --profile: per kind, groups of op self time that account for the whole step
    tables = proc.stdout.split("where a training step's time goes")[1:]
    assert len(tables) == 3
    for table in tables:
        rows = {line.split("|")[1].strip(): line.split("|")[2:-1]
                for line in table.splitlines()[3:] if line.startswith("| ")}
        assert {"conv", "matmul (FC)", "BatchNorm", "ReLU", "max-pool", "optimizer"} <= set(rows)
        assert abs(sum(float(cells[1]) for cells in rows.values()) - 100) < 1
        assert float(rows["conv"][2]) > 0  # GFLOP/s
        assert "this step would reach at most" in table


def test_allocator_comparison_prints_a_row_per_step():
    proc = run_script("benchmarks/throughput.py", "--allocator", "--rounds", "1", "--batches", "1")
    rows = [line.split("|")[1].strip() for line in proc.stdout.splitlines()
            if line.startswith("| ")][1:]
    assert rows == ["teacher", "student", "kd"]


def test_gpu_time_per_op_group_counts_each_kernel_once():
    """A fake profile of the shape torch.profiler gives on CUDA: ops (CPU events) with their
    kernels' self device time, the kernels again as CUDA events, one kernel that no op
    launched and an annotated range over the whole step, which are not kernels."""
    cpu, cuda = torch.autograd.DeviceType.CPU, torch.autograd.DeviceType.CUDA

    def event(name, device_type, device_us, cpu_us=0, parent=None, annotation=False):
        return SimpleNamespace(name=name, device_type=device_type, cpu_parent=parent,
                               self_device_time_total=device_us, self_cpu_time_total=cpu_us,
                               is_user_annotation=annotation, is_legacy=False)
    step = event("Optimizer.step#SGD.step", cpu, 0, cpu_us=5)
    events = [event("aten::cudnn_convolution", cpu, 300, cpu_us=40), step,
              event("aten::_foreach_add_", cpu, 50, cpu_us=10, parent=step),
              event("cudaLaunchKernel", cpu, 0, cpu_us=8),
              event("sm90_xmma_fprop_implicit_gemm", cuda, 300),
              event("multi_tensor_apply_kernel", cuda, 50),
              event("Memset (Device)", cuda, 20),
              event("ProfilerStep#1", cuda, 1000, annotation=True)]
    assert self_time_by_group(events, on_gpu=True) == {"conv": 300, "optimizer": 50,
                                                       "other": 20}
    assert self_time_by_group(events, on_gpu=False) == {"conv": 40, "optimizer": 15,
                                                        "other": 8}
