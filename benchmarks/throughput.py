"""How fast the teacher and the student train and infer here, against this machine's peak
(in the training precision) and against the tutorial data pipeline; prints a table.

    python benchmarks/throughput.py --data-root ../shared/data/cifar10-jpeg
    python benchmarks/throughput.py --compile      # also torch.compile'd training steps
    python benchmarks/throughput.py --profile      # also where a step's time goes, per op kind

Every variant processes a fixed number of images per round, and each round runs every
variant once, in turn (A B C ... A B C ...), so that the machine's minute-to-minute swings
hit all of them alike; the table gives the median over rounds, after one untimed round of
warm-up. Training goes through engine.train_one_epoch with the real BatchLoader (data and
augmentation included), as the training scripts do; inference through engine.evaluate.
The tutorial variant trains the same model on batches from torchvision's dataset, per-image
PIL transforms (random crop, flip, ToTensor) and a DataLoader with 2 workers (pinned memory
and asynchronous copies to a GPU). On a GPU every timed region ends with a synchronisation,
and the peak and the profile are the GPU's.
FLOP per training image = 3 x the forward pass (torch.utils.flop_counter), plus one teacher
forward for a KD step; the peak is the faster of a large matmul and a large convolution,
timed in the same rounds (see peak_variants). Peak memory: the peak RSS of a fresh process
while it runs a few training steps, less what it held before them (model, method, batch).
The feature methods' rows (`--kinds features`) train the student with each feature method
of methods.py, built as train_student.py builds it, and give their time and peak memory as
ratios of the KD step whose teacher runs on every batch.
"""
import atexit
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace


def temporary_folder(prefix):
    """A folder of this process's own, removed when it exits."""
    folder = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


if __name__ == "__main__":  # a process that imports this module keeps its environment
    # No progress bars inside the timed loops; tqdm reads this when it is imported.
    os.environ.setdefault("TQDM_DISABLE", "1")
# Read before the imports below: importing torchvision sets it (to Inductor's default cache).
GIVEN_COMPILE_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from torchvision import transforms  # noqa: E402

import methods  # noqa: E402
from kd import cli, engine, interrupts  # noqa: E402
from kd.allocator import OFF_SWITCH  # noqa: E402
from kd.data import (  # noqa: E402
    CROP_PADDING,
    TRAIN_SIZE,
    BatchLoader,
    gathers_per_epoch,
    load_cifar10,
    split_train_val,
)
from kd.device import autocast, machine_name, resolve_precision, select_device  # noqa: E402
from kd.ema import EMA_DECAY, ModelEMA  # noqa: E402
from kd.schedule import make_optimizer  # noqa: E402
from kd.teacher_logits import SharedTeacherLogits  # noqa: E402
from models import (  # noqa: E402
    IMAGE_SHAPE,
    NUM_CLASSES,
    build_model,
    count_macs,
    relu_before_pool,
)

# train_teacher.py's and train_student.py's; "kd" is a student step distilling from a teacher
BATCH_SIZE = {"teacher": 128, "student": 256, "kd": 256}
# The training scripts' optimizer (kd.schedule.make_optimizer: fused on a GPU), at the
# teacher's momentum and weight decay; the LR stays constant here.
RECIPE = SimpleNamespace(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4)
OTHER_PRECISION = {"fp32": "bf16", "bf16": "fp32"}
# The peak references' sizes per device type, (matmul size, conv batch): one call takes far
# longer than launching it.
PEAK_SIZES = {"cuda": (8192, 1024), "cpu": (2048, 64)}


# The row the feature methods' rows are measured against: a KD student step whose teacher runs
# on every batch (train_student.py --no-shared-logits), as a feature method's teacher does.
KD_STEP = "student: KD train (teacher forward included)"
# Each feature method as train_student.py builds it by default, and CRD also at the paper's K.
FEATURE_METHODS = ({"loss": "fitnet"}, {"loss": "at"}, {"loss": "reviewkd"},
                   {"loss": "reviewkd", "reviewkd_mid_channels": 16}, {"loss": "crd"},
                   {"loss": "crd", "crd_k": 16384})


class Variant:
    """A named workload: `run()` processes `images` images; `flop` per image (or None).
    `memory`: the (kind, method config) of the synthetic_step whose peak memory the row
    shows, or None; `vs_kd`: the row gives its time and peak memory as ratios of KD_STEP's.
    `may_fail`: an error in `run()` fails this row only (`failed` says why), not the run:
    torch.compile needs a compiler toolchain (Triton's, Inductor's) that a machine may lack."""

    def __init__(self, name, run, images, flop=None, batch=None, memory=None, vs_kd=False,
                 may_fail=False):
        self.name, self.run, self.images, self.flop, self.batch = name, run, images, flop, batch
        self.memory, self.vs_kd, self.may_fail = memory, vs_kd, may_fail
        self.seconds, self.warmup, self.peak_mib, self.failed = [], [], None, None
        self.graphs_skipped = 0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def training(model, loader, method, device, precision, compile_mode=None, threads=None,
             ema=False):
    """A run() doing one pass of engine.train_one_epoch over `loader` (SGD, constant LR), the
    model in the loader's memory format, the method's own modules trained with it as
    engine.fit trains them; with `ema`, an EMA of the weights updated after every step, as
    the training scripts keep by default."""
    model = model.to(device, memory_format=loader.memory_format)
    method = method.to(device)
    average = ModelEMA(model, EMA_DECAY) if ema else None
    after_step = (lambda: average.update_parameters(model)) if ema else None
    step_model = engine.compiled(model, compile_mode) if compile_mode else model
    optimizer = make_optimizer([*model.parameters(), *method.parameters()], RECIPE, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    def run():
        default_threads = torch.get_num_threads()
        torch.set_num_threads(threads or default_threads)
        method.set_epoch(0, len(loader))  # the same epoch each pass: the same batches
        try:
            engine.train_one_epoch(step_model, loader, method, optimizer, scheduler, device,
                                   precision, after_step=after_step)
        finally:
            torch.set_num_threads(default_threads)
    return run


class FeaturesCE(methods.CE):
    """Cross-entropy through the forward that also returns every feature (what a feature
    method's student step pays for them)."""
    features = True


def inference(model, loader, device, compile_mode=None):
    model = model.to(device, memory_format=torch.channels_last).eval()
    model = engine.compiled(model, compile_mode) if compile_mode else model
    return lambda: engine.evaluate(model, loader, device)


def data_only(loader):
    def run():
        for _ in loader:
            pass
    return run


class TutorialLoader:
    """The usual tutorial pipeline: torchvision dataset, per-image PIL transforms, DataLoader
    with 2 workers; each pass takes `batches` batches from a fresh iterator, so its workers
    start (start-up included in the time, as at every epoch's start) and stop within the
    pass and never run in the background of another variant."""

    # The model's layout; its first conv converts ToTensor's NCHW batches.
    memory_format = torch.channels_last

    def __init__(self, data_root, batch_size, batches, device):
        augment = transforms.Compose([transforms.RandomCrop(32, padding=CROP_PADDING),
                                      transforms.RandomHorizontalFlip(), transforms.ToTensor()])
        root = Path(data_root)
        if (root / "train").is_dir():
            dataset = torchvision.datasets.ImageFolder(root / "train", transform=augment)
        else:
            dataset = torchvision.datasets.CIFAR10(root, train=True, transform=augment)
        self.device = device
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                                  num_workers=2, drop_last=True,
                                                  pin_memory=device.type == "cuda")
        self.batches = batches

    def __len__(self):
        return self.batches

    def __iter__(self):
        iterator = iter(self.loader)
        try:
            for _ in range(self.batches):
                images, labels = next(iterator)
                yield (images.to(self.device, non_blocking=True),
                       labels.to(self.device, non_blocking=True), None)
        finally:
            del iterator  # shuts the workers down


def build_variants(args, device):
    data = load_cifar10(args.data_root)
    train, _ = split_train_val(data)
    torch.manual_seed(0)
    teacher = build_model("teacher").to(device, memory_format=torch.channels_last).eval()
    teacher.requires_grad_(False)
    precision, other = args.precision, OTHER_PRECISION[args.precision]
    forward_flop_teacher = 2 * count_macs(teacher)

    def loader(bs, augment=True, memory_format=torch.channels_last, positions=True,
               gather_per_epoch=None):
        return BatchLoader(*train, bs, device, shuffle=True, augment=augment, drop_last=True,
                           max_batches=args.batches, memory_format=memory_format,
                           positions=positions, gather_per_epoch=gather_per_epoch)

    # The loader's default on this device (a GPU gathers an epoch's augmented images at once,
    # a CPU batch by batch), timed against the other way.
    per_epoch = not gathers_per_epoch(device)
    other_gather = f"gathered per {'epoch' if per_epoch else 'batch'}"

    def model(kind):
        torch.manual_seed(0)
        return build_model(kind)

    ce = methods.CE({})

    def training_of(model, loader, method=ce, precision=precision, **kwargs):
        return training(model, loader, method, device, precision, **kwargs)

    def teacher_forward_step(config, name=None, flop=None):
        """A student step distilling from `teacher`, which runs on every batch, with the
        method `config` names, built as train_student.py builds it."""
        method = methods.build(config, teacher, None, train[1])
        k = (f" (K = {method.crd_k})" if hasattr(method, "crd_k") else
             f" (mid {method.reviewkd_mid_channels})" if hasattr(method, "reviewkd_mid_channels")
             else "")
        bs = BATCH_SIZE["kd"]
        return Variant(name or f"student: {config['loss']} train{k}",
                       training_of(model("student"), loader(bs), method), args.batches * bs,
                       flop, bs, memory=("kd", config), vs_kd="features" in args.kinds)

    variants = []
    for kind in args.kinds:
        if kind == "features":
            continue  # its rows follow the KD step's, below
        bs = BATCH_SIZE[kind]
        n = args.batches * bs
        forward_flop = 2 * count_macs(build_model(kind))
        flop = 3 * forward_flop

        def unaugmented(bs=bs):  # evaluation batches: images and labels only
            return loader(bs, False, positions=False)
        tutorial = TutorialLoader(args.data_root, bs, args.batches, device)
        variants += [
            Variant(f"{kind}: train", training_of(model(kind), loader(bs)), n, flop, bs,
                    memory=(kind, None)),
            Variant(f"{kind}: train, tutorial pipeline", training_of(model(kind), tutorial), n,
                    flop, bs),
            Variant(f"{kind}: data + augmentation only", data_only(loader(bs)), n, None, bs),
            Variant(f"{kind}: data + augmentation only, {other_gather}",
                    data_only(loader(bs, gather_per_epoch=per_epoch)), n, None, bs),
            Variant(f"{kind}: train, {other_gather}",
                    training_of(model(kind), loader(bs, gather_per_epoch=per_epoch)), n, flop, bs),
            Variant(f"{kind}: train, contiguous NCHW",
                    training_of(model(kind), loader(bs, memory_format=torch.contiguous_format)),
                    n, flop, bs),
            Variant(f"{kind}: train, EMA of the weights",
                    training_of(model(kind), loader(bs), ema=True), n, flop, bs),
            Variant(f"{kind}: train, ReLU before the pool",
                    training_of(relu_before_pool(model(kind)), loader(bs)), n, flop, bs),
            Variant(f"{kind}: inference", inference(model(kind), unaugmented(), device), n,
                    forward_flop, bs),
            Variant(f"{kind}: train, features returned (model(x, features=True))",
                    training_of(model(kind), loader(bs), FeaturesCE({})), n, flop, bs),
            Variant(f"{kind}: train, {other}", training_of(model(kind), loader(bs),
                                                          precision=other), n, flop, bs)]
        if device.type == "cpu" and torch.get_num_threads() > 1:
            variants.append(Variant(f"{kind}: train, 1 thread",
                                    training_of(model(kind), loader(bs), threads=1), n, flop,
                                    bs))
        if args.compile:
            variants += [
                Variant(f"{kind}: train, torch.compile {args.compile}",
                        training_of(model(kind), loader(bs), compile_mode=args.compile), n,
                        flop, bs, may_fail=True),
                Variant(f"{kind}: inference, torch.compile {args.compile}",
                        inference(model(kind), unaugmented(), device, compile_mode=args.compile), n,
                        forward_flop, bs, may_fail=True)]
    student_flop = 3 * 2 * count_macs(build_model("student"))
    if "student" in args.kinds:
        # The warm-up round computes the teacher's logits, the timed rounds are served them,
        # as a second KD run of a seed is (kd/teacher_logits.py).
        shared = methods.build({"loss": "kd+ce"}, teacher, SharedTeacherLogits(
            teacher, Path(temporary_folder("kd-bench-logits-")) / "l.pt", 1))
        bs = BATCH_SIZE["kd"]
        variants.append(Variant("student: train, KD with shared teacher logits", training_of(
            model("student"), loader(bs), shared), args.batches * bs, student_flop, bs))
    if {"student", "features"} & set(args.kinds):
        variants.append(teacher_forward_step({"loss": "kd+ce"}, KD_STEP,
                                             student_flop + forward_flop_teacher))
    if "features" in args.kinds:
        # no FLOP counted: the methods' own modules and losses add theirs
        variants += [teacher_forward_step(config) for config in FEATURE_METHODS]
    return variants + peak_variants(device, precision) + peak_variants(device, other)


def peak_variants(device, precision):
    """The two references for this machine's peak in `precision` (fp32 or bf16).
    On the CPU, torch.mm goes to MKL, whose sgemm takes its AVX2 path on AMD CPUs, and the
    models' convolutions go to oneDNN, which uses AVX-512 there, so a large 3x3 convolution
    can run twice as fast as a matmul. On a GPU they are cuBLAS and cuDNN, sized so that one
    call takes far longer than launching it (PEAK_SIZES). The higher of the two is the peak
    the table's percentages refer to."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    size, batch = PEAK_SIZES[device.type]
    a = torch.rand(size, size, device=device, dtype=dtype)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(
        device, dtype, memory_format=torch.channels_last).requires_grad_(False)
    x = torch.rand(batch, 256, 16, 16, device=device, dtype=dtype).contiguous(
        memory_format=torch.channels_last)
    return [Variant(f"peak: {precision} matmul {size}x{size} (torch.mm)", lambda: a @ a, 1,
                    2 * size ** 3),
            Variant(f"peak: {precision} 3x3 conv, 256 channels, 16x16, batch {batch}",
                    lambda: conv(x), 1, 2 * 256 * 256 * 9 * 16 * 16 * batch)]


def measure(variants, rounds, device):
    """Times `rounds` interleaved rounds of the variants, after a warm-up round; returns
    whether a Ctrl-C or TERM (a time limit) stopped it. Stopped, it keeps the rounds every
    row finished, so that their table still comes (none: the interrupt goes on), and holds
    further signals (a time limit's TERM may reach the process twice)."""
    try:
        measure_rounds(variants, rounds, device)
    except KeyboardInterrupt:
        interrupts.hold()
        done = min((len(v.seconds) for v in variants if not v.failed), default=0)
        if not done:
            raise
        for v in variants:
            del v.seconds[done:]  # a round cut short: dropped from every row alike
        print(f"interrupted: the {done} timed rounds that finished", file=sys.stderr)
        return True
    return False


def measure_rounds(variants, rounds, device):
    for round_ in range(rounds + 1):  # round 0 warms up (allocations, oneDNN kernels, compile)
        for v in variants:
            if v.failed:
                continue
            sync(device)  # a GPU starts idle and is timed until its last kernel ends
            # compiled rows on a GPU only: a CPU compiles no CUDA graphs and counts each graph
            counting = v.may_fail and device.type == "cuda"
            skipped = cudagraph_skips() if counting else 0
            start = time.perf_counter()
            try:
                v.run()
                sync(device)
                v.graphs_skipped += (cudagraph_skips() - skipped) if counting else 0
            except Exception as e:  # noqa: BLE001 (whatever the compiler raises)
                if not v.may_fail:
                    raise
                v.failed = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
                print(f"{v.name}: failed, left out ({v.failed})", file=sys.stderr)
                continue
            (v.seconds.append if round_ else v.warmup.append)(time.perf_counter() - start)
        print(f"round {round_}/{rounds} done", file=sys.stderr)


def use_a_fresh_compile_cache():
    """Compile into a new, empty cache (unless the caller named one), so that "compile s" is
    what a first run pays, not a hit in Inductor's default cache, which earlier compilations
    (the cuda tests' --compile run before the benchmark in gpu_check.sh) filled."""
    if GIVEN_COMPILE_CACHE is None:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = temporary_folder("kd-bench-inductor-")


def cudagraph_skips():
    """How many graphs torch.compile's reduce-overhead mode has compiled without CUDA graphs
    so far (an op or input it cannot capture: it warns once, then runs them unreplayed), from
    Inductor's counters; 0 where torch has none."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0
    return counters["inductor"]["cudagraph_skips"]


def peak_memory_mib(kind, config=None, steps=3):
    """Peak memory (MiB) a fresh CPU process adds while it runs `steps` training steps of
    synthetic_step(kind, config=config), over what its model, method and batch already hold."""
    out = in_fresh_process(f"from benchmarks.throughput import memory_probe; "
                           f"memory_probe({kind!r}, {config!r}, {steps})")
    return float(out.split()[-1])


def in_fresh_process(code, *argv, env=None):
    """stdout of Python `code` run in a fresh process that starts as every script does
    (allocator.keep_freed_memory, unless `env` sets its OFF_SWITCH to 0) and sees this repo."""
    prelude = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
               "from kd.allocator import keep_freed_memory; keep_freed_memory(); ")
    return subprocess.run([sys.executable, "-c", prelude + code, *argv], capture_output=True,
                          text=True, check=True, env=env).stdout


def synthetic_step(kind, device="cpu", precision="fp32", config=None):
    """A training step of `kind` ("teacher", "student" or "kd": a student distilling from a
    teacher, which runs on every batch, with the method `config` names, kd+ce by default) on
    one fixed random batch, in `precision`, as a function; no data work. The method is built
    as train_student.py builds it, on random labels for CIFAR-10's training split (a memory
    bank gets its real size), and trains with the student."""
    torch.manual_seed(0)
    model = build_model("student" if kind == "kd" else kind).to(
        device, memory_format=torch.channels_last)
    teacher = (build_model("teacher").to(device, memory_format=torch.channels_last).eval()
               .requires_grad_(False) if kind == "kd" else None)
    train_labels = torch.randint(0, NUM_CLASSES, (TRAIN_SIZE,))
    method = (methods.build(config or {"loss": "kd+ce"}, teacher, None, train_labels)
              if teacher else methods.CE({})).to(device)
    images = torch.rand(BATCH_SIZE[kind], *IMAGE_SHAPE, device=device).contiguous(
        memory_format=torch.channels_last)
    positions = torch.randperm(TRAIN_SIZE, device=device)[:BATCH_SIZE[kind]]
    labels = train_labels.to(device)[positions]
    optimizer = make_optimizer([*model.parameters(), *method.parameters()], RECIPE, device)

    def step():
        with autocast(torch.device(device), precision):
            loss = method(model, images, labels, positions)[1]["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def allocator_probe(kind, steps):
    """Minor page faults, system and wall seconds per training step of `kind` in this
    process, after two warm-up steps (printed as one line: faults sys_s wall_s)."""
    step = synthetic_step(kind)
    for _ in range(2):
        step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    print((after.ru_minflt - before.ru_minflt) / steps, (after.ru_stime - before.ru_stime)
          / steps, wall / steps)


def allocator_comparison(rounds, steps=10):
    """Per kind of step, malloc as glibc sets it against allocator.keep_freed_memory (what
    every script runs with): medians over `rounds` fresh processes each, interleaved."""
    code = ("from benchmarks.throughput import allocator_probe; "
            "allocator_probe(sys.argv[1], int(sys.argv[2]))")
    samples = {}
    for _ in range(rounds):
        for kind in ("teacher", "student", "kd"):
            for keep in ("0", "1"):
                out = in_fresh_process(code, kind, str(steps),
                                       env={**os.environ, OFF_SWITCH: keep})
                samples.setdefault((kind, keep), []).append(list(map(float, out.split())))
    rows = []
    for kind in ("teacher", "student", "kd"):
        (faults0, sys0, wall0), (faults1, sys1, wall1) = (
            [statistics.median(column) for column in zip(*samples[(kind, keep)])]
            for keep in ("0", "1"))
        rows.append({"step": kind, "page faults, glibc default": f"{faults0:,.0f}",
                     "page faults, kept": f"{faults1:,.0f}",
                     "system ms, default": f"{1000 * sys0:.1f}",
                     "system ms, kept": f"{1000 * sys1:.1f}",
                     "ms per step, default": f"{1000 * wall0:.1f}",
                     "ms per step, kept": f"{1000 * wall1:.1f}",
                     "speed, kept vs default": f"{wall0 / wall1:.2f}x"})
    return pd.DataFrame(rows)


def memory_probe(kind, config, steps):
    step = synthetic_step(kind, config=config)
    # Writing 5 to clear_refs resets the kernel's peak-RSS mark (VmHWM) to the current RSS,
    # so the peak read afterwards is that of the training steps alone.
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kib("VmRSS")
    for _ in range(steps):
        step()
    print((rss_kib("VmHWM") - before) / 1024)


# Where a step's time goes: each op's self time goes to the group of its outermost enclosing
# op or autograd node that matches (lower-case substring, first match), so that e.g. the
# zero-fill inside max-pool's backward counts as max-pool and SGD's add_ as optimizer.
OP_GROUPS = {"optimizer": "optimizer", "conv": "conv", "addmm": "matmul (FC)",
             "aten::mm": "matmul (FC)", "mmbackward": "matmul (FC)", "batch_norm": "BatchNorm",
             "batchnorm": "BatchNorm", "relu": "ReLU", "threshold": "ReLU",
             "max_pool": "max-pool", "maxpool": "max-pool", "softmax": "loss", "nll": "loss",
             "kl_div": "loss", "copy": "layout copies", "contiguous": "layout copies"}


def op_group(event):
    chain = []
    while event is not None:
        chain.append(event.name.lower())
        event = event.cpu_parent
    return next((group for name in reversed(chain) for key, group in OP_GROUPS.items()
                 if key in name), "other")


def self_time_by_group(events, on_gpu):
    """Self time (µs) of the profiled ops per OP_GROUPS group: on the CPU the ops' own time,
    on a GPU their kernels'. There each op's self device time (its kernels', less its
    children's) goes to its group, kernels launched outside any op to "other", and the
    kernels' own events, which torch.profiler lists beside the ops, are not summed again:
    counting both would count the GPU's time twice (torch's own table sums the kernels)."""
    cpu = torch.autograd.DeviceType.CPU
    us = {}
    for event in events:
        if event.device_type == cpu:
            group = op_group(event)
            us[group] = us.get(group, 0) + (event.self_device_time_total if on_gpu
                                            else event.self_cpu_time_total)
    if on_gpu:
        # the GPU's busy time as torch's table sums it: kernels, not annotated ranges, and
        # the CPU events that stand for their kernels where the profiler has no kernel events
        kernels = sum(event.self_device_time_total for event in events
                      if (event.is_legacy if event.device_type == cpu
                          else not event.is_user_annotation))
        us["other"] = us.get("other", 0) + kernels - sum(us.values())
    return us


def profile_breakdown(kind, device, precision, peak_gflops, steps=10, config=None):
    """Self time of a training step's aten ops (torch.profiler), summed per OP_GROUPS group,
    per step and as a share of the step; for conv and matmul also the GFLOP/s they reach,
    from the FLOP that torch.utils.flop_counter counts for them (forward and backward).
    Last, the ceiling the other groups put on the step: its % of peak if conv and matmul
    ran at the peak. On a GPU the times are the kernels' (device time per op), and what the
    ops leave of the step is time the GPU sat idle, waiting for the host to launch work.
    config: for kind "kd", the method (synthetic_step's), named in the title with its
    settings ("kd (loss crd, crd_k 16384)")."""
    step = synthetic_step(kind, device, precision, config)
    for _ in range(3):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flop = {"conv": 0, "matmul (FC)": 0}
    for op, n in counter.get_flop_counts()["Global"].items():
        flop["conv" if "convolution" in str(op) else "matmul (FC)"] += n
    sync(device)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        # timed inside: the profiler's start and its event processing at exit are no step's
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        step_ms = 1e3 * (time.perf_counter() - start) / steps
    ms = {group: us / 1e3 / steps
          for group, us in self_time_by_group(prof.events(), device.type == "cuda").items()}
    idle = ("GPU idle (waiting for the host to launch kernels)" if device.type == "cuda"
            else "outside aten ops (Python, autograd engine)")
    ms[idle] = step_ms - sum(ms.values())
    rows = [{"what": group, "ms / step": round(t, 2), "share %": round(100 * t / step_ms, 1),
             "GFLOP/s": round(flop[group] / t / 1e6) if group in flop else ""}
            for group, t in sorted(ms.items(), key=lambda item: -item[1])]
    name = f"{kind} ({', '.join(f'{k} {v}' for k, v in config.items())})" if config else kind
    print(f"\n{name}: where a training step's time goes (batch {BATCH_SIZE[kind]}, {precision}, "
          f"profiled, {step_ms:.1f} ms per step)")
    print(pd.DataFrame(rows).to_markdown(index=False))
    other_ms = step_ms - sum(ms[group] for group in flop)
    at_peak_ms = sum(flop.values()) / peak_gflops / 1e6
    print(f"with conv and matmul at the {peak_gflops:.0f} GFLOP/s peak and the rest as it is, "
          f"this step would reach at most {100 * at_peak_ms / (at_peak_ms + other_ms):.0f}% "
          f"of the peak")


def rss_kib(field):
    line = next(line for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(field + ":"))
    return int(line.split()[1])


def row_precision(name, precision):
    """The arithmetic of a row's work: inference is evaluation's, always fp32; a training
    row in the other precision says so in its name."""
    other = OTHER_PRECISION[precision]
    return "fp32" if ": inference" in name else other if name.endswith(f", {other}") else precision


def report(variants, device, precision):
    timed = [v for v in variants if not v.failed]
    peaks = {v.name: v.flop / statistics.median(v.seconds) / 1e9
             for v in timed if v.name.startswith("peak:")}
    peak_of = {p: max(g for name, g in peaks.items() if name.startswith(f"peak: {p} "))
               for p in ("fp32", "bf16")}  # each row's share is of its own precision's peak
    other = OTHER_PRECISION[precision]
    tutorial = {v.name.split(":")[0]: statistics.median(v.seconds) / v.images
                for v in timed if "tutorial" in v.name}
    data_only = {v.name.split(":")[0]: statistics.median(v.seconds)
                 for v in timed if v.name.endswith(": data + augmentation only")}
    default = {v.name: statistics.median(v.seconds) / v.images for v in timed}
    kd_peak_mib = next((v.peak_mib for v in variants if v.name == KD_STEP), None)
    rows = []
    for v in variants:
        if v.failed:
            rows.append({"variant": v.name, "batch": v.batch, "images/s": "failed"})
            continue
        if v.name in peaks:
            continue
        kind = v.name.split(":")[0]
        seconds = statistics.median(v.seconds)
        per_image = seconds / v.images
        row = {"variant": v.name, "batch": v.batch, "images/s": round(v.images / seconds),
               "spread %": round(100 * (max(v.seconds) - min(v.seconds)) / seconds)}
        if v.flop:
            gflops = v.flop * v.images / seconds / 1e9
            row.update({"GFLOP/image": round(v.flop / 1e9, 4), "GFLOP/s": round(gflops, 1),
                        "% of peak": round(100 * gflops / peak_of[
                            row_precision(v.name, precision)], 1)})
        if v.name.endswith(": train"):
            row["speed vs tutorial"] = round(tutorial[kind] / per_image, 2)
            row["data share %"] = round(100 * data_only[kind] / seconds, 1)
        if ", " in v.name and "tutorial" not in v.name:  # a variant of a default: the ratio
            row["speed vs default"] = round(default[v.name.split(", ")[0]] / per_image, 2)
        if "compile" in v.name:  # compilation happens in the warm-up round
            row["compile s"] = round(v.warmup[0] - seconds, 1)
        if v.peak_mib is not None:
            row["peak MiB"] = round(v.peak_mib)
        if v.vs_kd:  # cost ratios (a target is "at most 1.3x"), not speed ratios
            row["time vs KD step"] = round(per_image / default[KD_STEP], 2)
            if v.peak_mib is not None:
                row["memory vs KD step"] = round(v.peak_mib / kd_peak_mib, 2)
        rows.append(row)
    table = pd.DataFrame(rows).astype(object).fillna("")
    rounds = len(timed[0].seconds)
    print(f"\n{machine_name(device)}; {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, {precision} training ('{other}' rows: the same step in "
          f"{other}), median of {rounds} interleaved rounds; peaks: " +
          ", ".join(f"{name[6:]} {gflops:.0f} GFLOP/s" for name, gflops in peaks.items()) +
          f"; '% of peak' refers to the faster of each row's precision (inference: fp32; "
          f"{precision} {peak_of[precision]:.0f}, {other} {peak_of[other]:.0f} GFLOP/s)" +
          ("; 'peak MiB': what a few training steps add to a fresh process's RSS over its "
           "model, method and batch (CPU)" if "peak MiB" in table else "") +
          (f"; 'time vs KD step' (per image) and 'memory vs KD step' (peak MiB): cost ratios "
           f"to '{KD_STEP}'" if "time vs KD step" in table else ""))
    print(table.to_markdown(index=False))
    for v in variants:
        if v.failed:
            print(f"- {v.name}: failed ({v.failed})")
        elif v.graphs_skipped:
            print(f"- {v.name}: {v.graphs_skipped} graph(s) compiled without CUDA graphs "
                  f"(Inductor's warning says why): its times are not the CUDA-graph path's")
    return peak_of[precision]


def main():
    parser = cli.parser(__doc__)
    cli.add_data_device_args(parser)
    cli.add_precision_arg(parser)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (default: 5)")
    parser.add_argument("--batches", type=int, default=8,
                        help="batches per variant per round (default: 8)")
    parser.add_argument("--compile", nargs="?", const="default", choices=cli.COMPILE_MODES,
                        metavar="MODE", help="also time torch.compile'd training steps and "
                        "inference, in torch.compile's MODE: default (bare --compile) or "
                        "reduce-overhead (CUDA graphs on a GPU) or max-autotune")
    parser.add_argument("--kinds", nargs="+", choices=("teacher", "student", "features"),
                        default=["teacher", "student", "features"],
                        help="the rows to time: the teacher's, the student's (its KD steps "
                             "included) and the feature methods' steps against the KD step "
                             "with the teacher's forward (default: all)")
    parser.add_argument("--profile", action="store_true",
                        help="also print where a training step's time goes, per kind of op")
    parser.add_argument("--allocator", action="store_true",
                        help="instead, compare training steps with glibc's malloc settings "
                             "and with allocator.keep_freed_memory (CPU, fresh processes)")
    args = parser.parse_args()
    if args.rounds < 1 or args.batches < 1:
        raise cli.UserError("--rounds and --batches must be positive")
    if args.compile:
        use_a_fresh_compile_cache()
    device = select_device(args.device)
    args.precision = resolve_precision(args.precision, device)
    busy = os.getloadavg()[0]
    if device.type == "cpu" and busy > 0.5:
        # Another process on these cores skews every row, and not alike (two processes of
        # OpenMP threads can slow each other 3x here).
        print(f"warning: load average {busy:.1f} before the start; time on an idle machine",
              file=sys.stderr)
    if args.allocator:
        print(f"the allocator: per training step ({args.batches} timed after 2 untimed), medians "
              f"of {args.rounds} fresh processes each (interleaved), malloc as glibc sets it "
              "against keep_freed_memory:\n\n" +
              allocator_comparison(args.rounds, steps=args.batches).to_markdown(index=False))
        return
    variants = build_variants(args, device)
    if measure(variants, args.rounds, device):
        report(variants, device, args.precision)
        raise KeyboardInterrupt  # an interrupted run's exit, after the table of what it timed
    if device.type == "cpu" and Path("/proc/self/clear_refs").exists():
        for v in variants:
            if v.memory:
                v.peak_mib = peak_memory_mib(*v.memory)
    peak_gflops = report(variants, device, args.precision)
    if args.profile:
        for kind in ("teacher", "student", "kd"):
            profile_breakdown(kind, device, args.precision, peak_gflops)
        if "features" in args.kinds:
            for config in FEATURE_METHODS:
                profile_breakdown("kd", device, args.precision, peak_gflops, config=config)


if __name__ == "__main__":
    cli.run_cli(main, trains=False)
