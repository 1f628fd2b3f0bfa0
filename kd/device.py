"""Where a run computes and in what arithmetic, decided in one place: the device, the
precision of the training steps, and the backend settings that go with them."""
import contextlib
import os
import platform
import re
import sys
import warnings
from pathlib import Path

import torch

from kd.cli import UserError

try:
    import resource
except ImportError:  # not on Windows: its runs record no peak
    resource = None


def select_device(name):
    """The torch.device for --device NAME, with the backends set up for it."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA device is available (use "
                        "--device cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        # fp32 means fp32: TF32 would round conv and matmul inputs to 10 mantissa bits, and
        # evaluation (always fp32) would no longer be comparable with the CPU's.
        ieee_fp32()
        # Every training batch has the same shape, so cuDNN's search for the fastest
        # convolution algorithm is paid once and reused for the whole run.
        torch.backends.cudnn.benchmark = True
    return device


def ieee_fp32():
    """fp32 convolutions and matmuls in full fp32 on CUDA, no TF32. Through the
    fp32_precision settings where torch has them (2.9 and later): there the allow_tf32
    setters warn (2.9-2.11 at least, once per CUDA process) that they are to be
    deprecated."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        # The legacy cuDNN flag too, first: inductor's conv templates (--compile max-autotune)
        # still read it, and its getter raises after the new API alone set the conv's ("a mix
        # of the legacy and new APIs"). Its setter's deprecation warning is not shown.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def cpu_bf16_units():
    """The CPU's instructions for bf16 arithmetic, which oneDNN runs bf16 convolutions and
    matmuls on: AMX tiles (Intel Sapphire Rapids and later) and AVX512_BF16 (also AMD Zen 4
    and later); empty where bf16 would only be emulated."""
    probes = {"AMX": "_is_amx_tile_supported", "AVX512_BF16": "_is_avx512_bf16_supported"}
    # private probes of torch.cpu: a build without one counts as a CPU without the unit
    return [unit for unit, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()]


CPUINFO = Path("/proc/cpuinfo")


def machine_name(device):
    """What a run computes on, for its records and the benchmark: the GPU's name, or the
    CPU's model name with its family and model numbers (where Linux gives them: a virtual
    machine may name a Zen 4 and a Zen 5 both "AMD EPYC", and their runs' numbers differ),
    core count and bf16 units."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    lines = CPUINFO.read_text().splitlines() if CPUINFO.exists() else []
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    name = fields.get("model name") or platform.processor() or "unknown CPU"
    generation = (f"family {fields['cpu family']}, model {fields['model']}; "
                  if "cpu family" in fields and "model" in fields else "")
    return (f"{name} ({generation}{os.cpu_count()} CPUs, bf16 units: "
            f"{', '.join(cpu_bf16_units()) or 'none'})")


def peak_memory_mb(device):
    """The most memory this process has held so far, in MiB, for a run's records: a memory
    leak shows as a peak that climbs epoch by epoch. On the CPU the peak resident set (of the
    whole process, since it started: a resumed run starts again), on a CUDA device also the
    peak of its tensors there."""
    peak = {}
    if resource is not None:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak["peak_memory_mb"] = maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    if device.type == "cuda":
        peak["cuda_peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


def same_machine(recorded, current):
    """Whether two names of machine_name's give one machine. A name recorded before the
    names held the CPU's family and model numbers (commit e519480) matches a name with any:
    those records cannot tell, and saying the run moved would be a guess."""
    if recorded == current:
        return True
    generation = re.compile(r"family \d+, model \d+; ")
    return (generation.sub("", recorded) == generation.sub("", current)
            and not (generation.search(recorded) and generation.search(current)))


def bf16_is_native(device):
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return bool(cpu_bf16_units())


def resolve_precision(name, device):
    """"bf16" or "fp32": what --precision NAME (auto, fp32, bf16) means on `device`.

    auto is bf16 where the hardware computes in it natively: a CUDA device of compute
    capability 8.0 (Ampere) or later, or a CPU with AMX or AVX512_BF16. Elsewhere fp32:
    bf16 there is emulated, many times slower (docs/performance.md)."""
    if name == "auto":
        return "bf16" if bf16_is_native(device) else "fp32"
    if name == "bf16" and device.type == "cuda" and not bf16_is_native(device):
        raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no native "
                        f"bf16 (it needs compute capability 8.0 or later); use --precision fp32")
    return name


def autocast(device, precision):
    """The context a training step's forward pass and loss run in."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
