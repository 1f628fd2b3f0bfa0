"""Where a run computes and in what arithmetic, decided in one place: the device, the
precision of the training steps, and the backend settings that go with them."""
import contextlib

import torch

from cli import UserError


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
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        # Every training batch has the same shape, so cuDNN's search for the fastest
        # convolution algorithm is paid once and reused for the whole run.
        torch.backends.cudnn.benchmark = True
    return device


def resolve_precision(name, device):
    """"bf16" or "fp32": what --precision NAME (auto, fp32, bf16) means on `device`.

    auto is bf16 on a CUDA device with native bf16 (compute capability 8.0, Ampere, and
    later) and fp32 elsewhere: on CPUs without AMX, bf16 autocast is slower than fp32."""
    bf16_native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    if name == "auto":
        return "bf16" if bf16_native else "fp32"
    if name == "bf16" and device.type == "cuda" and not bf16_native:
        raise UserError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no native "
                        f"bf16 (it needs compute capability 8.0 or later); use --precision fp32")
    return name


def autocast(device, precision):
    """The context a training step's forward pass and loss run in."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
