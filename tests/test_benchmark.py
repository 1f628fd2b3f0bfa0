"""benchmarks/throughput.py runs end to end on a small set (its numbers are not checked:
timing belongs to the benchmark, not to the tests)."""
import functools
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import methods
from benchmarks import throughput
from conftest import ROOT, run_script
from kd import interrupts
from kd.device import resolve_precision
from kd.schedule import make_optimizer
from models import build_model


@pytest.fixture
def one_thread(monkeypatch):
    """Torch on one thread, here and in the processes started: the suite's other workers keep
    the cores busy, and two threads waiting for each other on busy cores make every op
    several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(threads)


def test_benchmark_prints_every_row(image_folder, monkeypatch, capsys, one_thread):
    """Every kind's rows from one run in this process (one data load, one set of peak
    references) at the least work: one round of one batch of 8 images, peak references of
    one small call, a profile of one step; the peak-memory probes, fresh processes, are
    stubbed (the next test runs one). On one thread, the "1 thread" rows are not made."""
    for kind in throughput.BATCH_SIZE:
        monkeypatch.setitem(throughput.BATCH_SIZE, kind, 8)
    monkeypatch.setitem(throughput.PEAK_SIZES, "cpu", (64, 1))
    monkeypatch.setattr(throughput, "profile_breakdown",
                        functools.partial(throughput.profile_breakdown, steps=1))
    probes = []
    monkeypatch.setattr(throughput, "peak_memory_mib",
                        lambda *probe: probes.append(probe) or 100.0 * len(probes))
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--data-root", str(image_folder),
                                      "--device", "cpu", "--rounds", "1", "--batches", "1",
                                      "--profile"])
    throughput.main()
    out = capsys.readouterr().out
    _, columns, _, *lines = out.split("\n\n")[0].strip().splitlines()  # header, the table

    def split_row(line):
        return [cell.strip() for cell in line.split("|")[1:-1]]
    rows = {row[0]: dict(zip(split_row(columns), row)) for row in map(split_row, lines)}
    # the step in the other precision beside the default's
    other = {"fp32": "bf16", "bf16": "fp32"}[resolve_precision("auto", torch.device("cpu"))]
    for kind in ("teacher", "student"):
        for variant in ("train", "train, tutorial pipeline", "data + augmentation only",
                        "data + augmentation only, gathered per epoch",
                        "train, gathered per epoch", "inference", f"train, {other}"):
            assert f"{kind}: {variant}" in rows
    assert "student: train, KD with shared teacher logits" in rows
    assert "teacher: train, EMA of the weights" in rows
    assert "bf16 units: " in out and "peak: bf16 3x3 conv" not in rows  # machine, peaks
    assert "bf16 3x3 conv" in out and "fp32 3x3 conv" in out

    # the feature methods against the KD step whose teacher runs on every batch, CRD at its
    # default K and the paper's: time and peak memory as ratios of the KD step's
    crd_k = next(flag.default for flag in methods.CRD.flags if flag.name == "crd_k")
    kd = throughput.KD_STEP
    mid = next(flag.default for flag in methods.ReviewKD.flags
               if flag.name == "reviewkd_mid_channels")
    feature_rows = [kd, "student: fitnet train", "student: at train",
                    f"student: reviewkd train (mid {mid})", "student: reviewkd train (mid 16)",
                    f"student: crd train (K = {crd_k})", "student: crd train (K = 16384)"]
    for name in feature_rows:
        assert float(rows[name]["images/s"]) > 0
        assert float(rows[name]["time vs KD step"]) > 0
        assert float(rows[name]["memory vs KD step"]) == round(
            float(rows[name]["peak MiB"]) / float(rows[kd]["peak MiB"]), 2)
    assert float(rows[kd]["time vs KD step"]) == 1
    assert [name for name in rows if rows[name]["peak MiB"]] == [
        "teacher: train", "student: train", *feature_rows]
    assert [config for _, config in probes] == [
        None, None, {"loss": "kd+ce"}, *throughput.FEATURE_METHODS]

    # --profile: per kind, groups of op self time that account for the whole step
    tables = out.split("where a training step's time goes")[1:]
    assert len(tables) == 3 + len(throughput.FEATURE_METHODS)  # teacher, student, kd; methods
    assert "kd (loss crd, crd_k 16384): where" in out
    assert all(f"kd (loss {config['loss']}" in out for config in throughput.FEATURE_METHODS)
    for table in tables:
        rows = {line.split("|")[1].strip(): line.split("|")[2:-1]
                for line in table.splitlines()[3:] if line.startswith("| ")}
        assert {"conv", "matmul (FC)", "BatchNorm", "ReLU", "max-pool", "optimizer"} <= set(rows)
        assert abs(sum(float(cells[1]) for cells in rows.values()) - 100) < 1
        assert float(rows["conv"][2]) > 0  # GFLOP/s
        assert "this step would reach at most" in table


def test_inference_rows_are_shares_of_the_fp32_peak_whatever_the_training_precision(capsys):
    """Evaluation runs in fp32: its rows' "% of peak" was taken of the training precision's
    peak, in a bf16 run a share of the bf16 peak (580% on a CPU that emulates bf16)."""
    def timed(name, flop, seconds):
        variant = throughput.Variant(name, None, images=100, flop=flop)
        variant.seconds = [seconds]
        return variant
    variants = [timed("teacher: train", 1e9, 1.0), timed("teacher: train, tutorial pipeline",
                                                         1e9, 2.0),
                timed("teacher: data + augmentation only", None, 0.1),
                timed("teacher: inference", 1e9, 0.5),
                timed("peak: fp32 3x3 conv", 400e9, 1.0), timed("peak: bf16 3x3 conv", 1e9, 1.0)]
    throughput.report(variants, torch.device("cpu"), "bf16")
    row = next(line for line in capsys.readouterr().out.splitlines()
               if line.startswith("| teacher: inference "))
    gflops, share = [float(cell) for cell in row.split("|")[6:8]]
    assert (gflops, share) == (200.0, 50.0)  # of fp32's 400 GFLOP/s, not bf16's 1


def test_an_interrupted_benchmark_keeps_the_rounds_that_finished(monkeypatch, capsys):
    """The table came only after every round: a time limit's TERM (gpu_check.sh's stop)
    lost every measurement. Now the rounds all rows finished are kept, a round cut short is
    dropped from every row (the rows stay interleaved alike), and none finished is none."""
    calls = []

    def step():
        calls.append(1)
        if len(calls) == 11:  # the third timed round (after the warm-up), its second row
            raise KeyboardInterrupt
    variants = [throughput.Variant(name, step, images=1) for name in ("a", "b", "c")]
    handlers = {sig: signal.getsignal(sig) for sig in interrupts.STOP_SIGNALS}
    try:
        assert throughput.measure(variants, 5, torch.device("cpu")) is True
        assert [len(v.seconds) for v in variants] == [2, 2, 2]
        calls.clear()
        variants = [throughput.Variant(name, step, images=1) for name in "abcdefgh"]
        with pytest.raises(KeyboardInterrupt):  # no timed round finished (8 rows: call 11)
            throughput.measure(variants, 5, torch.device("cpu"))
        class InterruptedAtTheLastRoundsEnd(io.StringIO):
            def write(self, text):
                if text.startswith("round 2/2"):
                    raise KeyboardInterrupt
                return super().write(text)
        monkeypatch.setattr(sys, "stderr", InterruptedAtTheLastRoundsEnd())
        calls.clear()  # after the last row of the last round: still an interrupted run
        variants = [throughput.Variant(name, step, images=1) for name in "ab"]
        assert throughput.measure(variants, 2, torch.device("cpu")) is True
        assert [len(v.seconds) for v in variants] == [2, 2]
        monkeypatch.undo()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)

    # the script prints the table of the rounds kept, then exits as interrupted
    calls.clear()
    monkeypatch.setattr(throughput, "build_variants", lambda args, device: [
        throughput.Variant("teacher: inference", step, images=1, flop=1e6),
        *(throughput.Variant(f"peak: {p} mm", step, images=1, flop=1e6) for p in ("fp32", "bf16"))])
    monkeypatch.setattr(sys, "argv", ["throughput.py", "--device", "cpu", "--rounds", "5"])
    with pytest.raises(KeyboardInterrupt):
        throughput.main()
    out = capsys.readouterr().out
    assert "median of 2 interleaved rounds" in out and "| teacher: inference " in out


def test_peak_memory_probe_runs_a_feature_step(one_thread):
    """The probe the table's peak memory comes from, in its fresh process, on the feature
    step with the most state of its own: CRD, its memory bank at CIFAR-10's size."""
    assert throughput.peak_memory_mib("kd", {"loss": "crd"}, steps=1) > 0


def test_importing_the_benchmark_leaves_the_environment_alone():
    """The suite imports it: a variable it set would reach every later test's scripts.
    (Importing torchvision sets one of its own, the inductor cache's, first.)"""
    code = ("import os, sys, torchvision; before = dict(os.environ); sys.path.insert(0, '.'); "
            "import benchmarks.throughput; print(sorted(set(os.environ.items()) ^ "
            "set(before.items())))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("TQDM_DISABLE", "TORCHINDUCTOR_CACHE_DIR")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=True)
    assert proc.stdout.strip() == "[]"


def test_compiled_rows_compile_into_a_fresh_cache_unless_one_is_given(monkeypatch):
    """Importing torchvision names Inductor's default cache, which earlier compilations
    filled: "compile s" would time cache hits."""
    monkeypatch.setattr(throughput, "GIVEN_COMPILE_CACHE", None)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_default")
    throughput.use_a_fresh_compile_cache()
    fresh = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    assert fresh.name.startswith("kd-bench-inductor-") and list(fresh.iterdir()) == []
    monkeypatch.setattr(throughput, "GIVEN_COMPILE_CACHE", "/tmp/mine")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/mine")
    throughput.use_a_fresh_compile_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/tmp/mine"


def test_allocator_comparison_prints_a_row_per_step(one_thread, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    proc = run_script("benchmarks/throughput.py", "--allocator", "--rounds", "1", "--batches", "1")
    rows = [line.split("|")[1].strip() for line in proc.stdout.splitlines()
            if line.startswith("| ")][1:]
    assert rows == ["teacher", "student", "kd"]
    assert list(tmp_path.iterdir()) == []  # its fresh compile cache removed at exit


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
    assert throughput.self_time_by_group(events, on_gpu=True) == {"conv": 300, "optimizer": 50,
                                                       "other": 20}
    assert throughput.self_time_by_group(events, on_gpu=False) == {"conv": 40, "optimizer": 15,
                                                        "other": 8}


def test_compiled_rows_compile_what_a_training_run_compiles(monkeypatch):
    """The teacher and the student share their forward's code, so the second one compiled
    would turn the batch size symbolic unless shapes are static, as in a training run."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: calls.append(kw) or model)
    loader = [(torch.rand(4, 3, 32, 32), torch.arange(4), None)]
    throughput.training(build_model("student"), SimpleNamespace(
        memory_format=torch.channels_last, __len__=lambda: 1), methods.CE({}),
        torch.device("cpu"), "fp32", compile_mode="reduce-overhead")
    throughput.inference(build_model("teacher"), loader, torch.device("cpu"), "reduce-overhead")
    assert calls == [{"mode": "reduce-overhead", "dynamic": False}] * 2


def test_the_timed_and_profiled_steps_use_the_training_scripts_optimizer(monkeypatch):
    """They built a plain SGD, without weight decay (and on a GPU the foreach step where the
    scripts run a fused one), so the rows did not time the pipeline's step."""
    built = []

    def recorded(parameters, args, device):
        built.append((args.optimizer, args.momentum, args.weight_decay, torch.device(device)))
        return make_optimizer(parameters, args, device)
    monkeypatch.setattr(throughput, "make_optimizer", recorded)
    throughput.training(build_model("student"), SimpleNamespace(
        memory_format=torch.channels_last, __len__=lambda: 1), methods.CE({}),
        torch.device("cpu"), "fp32")
    throughput.synthetic_step("student")
    assert built == [("sgd", 0.9, 5e-4, torch.device("cpu"))] * 2


def test_a_compiled_row_whose_graphs_skip_cuda_graphs_says_so(capsys, monkeypatch):
    """reduce-overhead quietly runs a graph it cannot capture without CUDA graphs: the row
    that did so says its times are not the CUDA-graph path's; rows run eagerly are not
    charged with what a compiled row skipped."""
    skips = [0]
    monkeypatch.setattr(throughput, "cudagraph_skips", lambda: skips[0])

    def skipping():
        skips[0] += 1
    variants = [throughput.Variant("peak: fp32 mm", lambda: None, 8, flop=1e6),
                throughput.Variant("peak: bf16 mm", lambda: None, 8, flop=1e6),
                throughput.Variant("student: inference, contiguous NCHW", skipping, 8),
                throughput.Variant("student: inference", lambda: None, 8),
                throughput.Variant("student: inference, torch.compile reduce-overhead",
                                   skipping, 8, may_fail=True)]
    throughput.measure(variants, 1, torch.device("cpu"))  # a CPU compiles no CUDA graphs
    assert [v.graphs_skipped for v in variants] == [0] * 5
    for v in variants:
        v.seconds, v.warmup = [], []
    monkeypatch.setattr(throughput, "sync", lambda device: None)
    throughput.measure(variants, 1, torch.device("cuda"))
    assert [v.graphs_skipped for v in variants] == [0, 0, 0, 0, 2]
    throughput.report(variants, torch.device("cpu"), "fp32")
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("- ")]
    assert notes == ["- student: inference, torch.compile reduce-overhead: 2 graph(s) compiled "
                     "without CUDA graphs (Inductor's warning says why): its times are not "
                     "the CUDA-graph path's"]


def test_a_compiled_row_that_fails_is_reported_and_the_rest_measured(capsys):
    """A GPU machine may lack the compiler torch.compile needs: that row says it failed, and
    every other row is still timed (a lent machine's minutes are not spent twice). Any other
    row's error stops the benchmark. The data share of a training step is the default
    loader's, not the other gather's."""
    def compile_error():
        raise RuntimeError("Failed to find C compiler. Please specify via CC\nmore")

    def pause(seconds):
        return lambda: time.sleep(seconds)
    names = {"peak: fp32 mm": pause(0.001), "peak: bf16 mm": pause(0.001),
             "student: train, tutorial pipeline": pause(0.02),
             "student: data + augmentation only": pause(0.001),
             "student: data + augmentation only, gathered per epoch": pause(0.03),
             "student: train": pause(0.01)}
    variants = [throughput.Variant(name, run, 8, flop=1e6) for name, run in names.items()]
    compiled = throughput.Variant("student: train, torch.compile reduce-overhead",
                                  compile_error, 8, flop=1e6, may_fail=True)
    device = torch.device("cpu")
    throughput.measure([*variants, compiled], 2, device)
    assert compiled.failed == "RuntimeError: Failed to find C compiler. Please specify via CC"
    assert all(len(v.seconds) == 2 for v in variants) and not compiled.seconds
    throughput.report([*variants, compiled], device, "fp32")
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "torch.compile" in line)
    assert "| failed " in row
    assert "- student: train, torch.compile reduce-overhead: failed (RuntimeError: " in out
    train = next(line for line in out.splitlines() if line.startswith("| student: train  "))
    header = next(line for line in out.splitlines() if line.startswith("| variant"))
    share = dict(zip([c.strip() for c in header.split("|")],
                     [c.strip() for c in train.split("|")]))["data share %"]
    assert float(share) < 50  # 0.001 s of 0.01 s, not the other gather's 0.03
    with pytest.raises(RuntimeError, match="C compiler"):
        throughput.measure([throughput.Variant("student: train", compile_error, 8)], 1, device)
