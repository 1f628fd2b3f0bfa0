"""What a training process pays before its steady steps, stage by stage, for the GPU
check's timings: importing torch, importing the project, the device's context (CUDA's is
created on first use), and a teacher's and a student's first training steps beyond a
steady one (cuDNN's algorithm search under cudnn.benchmark, lazy initialisation). Prints
one tab-separated line per stage: "start-up: <what>", seconds.

    python benchmarks/startup.py --device cuda
"""
import sys
import time
from pathlib import Path

start = time.perf_counter()
import torch  # noqa: E402

torch_imported = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import losses  # noqa: E402, F401  (what every training script imports)
import models  # noqa: E402, F401
from kd import cli, engine  # noqa: E402, F401
from kd.device import resolve_precision, select_device  # noqa: E402

project_imported = time.perf_counter()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def first_step_extra(kind, device, precision, steady_steps=5):
    """Seconds the first training step of `kind` takes beyond the median of the next ones."""
    from benchmarks.throughput import synthetic_step
    step = synthetic_step(kind, device, precision)
    seconds = []
    for _ in range(1 + steady_steps):
        sync(device)
        begin = time.perf_counter()
        step()
        sync(device)
        seconds.append(time.perf_counter() - begin)
    return seconds[0] - sorted(seconds[1:])[steady_steps // 2]


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--steady-steps", type=int, default=5,
                        help="steps after the first, whose median is the steady one (default: 5)")
    args = parser.parse_args()
    before_context = time.perf_counter()
    device = select_device(args.device)
    torch.zeros(1, device=device)  # creates the CUDA context on a GPU
    sync(device)
    context = time.perf_counter() - before_context
    precision = resolve_precision("auto", device)
    rows = [("import torch", torch_imported - start),
            ("import the project", project_imported - torch_imported),
            (f"{device.type} context", context)]
    rows += [(f"{kind}'s first step beyond a steady one",
              first_step_extra(kind, device, precision, args.steady_steps))
             for kind in ("teacher", "student")]
    for what, seconds in rows:
        print(f"start-up: {what}\t{seconds:.2f}")


if __name__ == "__main__":
    main()
