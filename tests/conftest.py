"""Shared fixtures: small synthetic CIFAR-10 look-alikes made on the spot, in both layouts."""
import atexit
import importlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Decoded-data caches of the synthetic sets go to a temporary folder, not the project's .cache,
# removed when the process (each xdist worker has its own) exits.
os.environ["KD_CACHE_DIR"] = tempfile.mkdtemp(prefix="kd-test-cache-")
atexit.register(shutil.rmtree, os.environ["KD_CACHE_DIR"], ignore_errors=True)
# `pytest -n auto` runs one worker per core. Left alone, each worker's torch, and each script
# a test starts, would use every core as well, and OpenMP threads that outnumber the cores
# spin against each other; so each worker gets its share of the cores, and so do the
# processes it starts (they inherit OMP_NUM_THREADS).
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)

from kd import engine  # noqa: E402
from kd.checkpoints import load_checkpoint  # noqa: E402
from kd.data import CLASSES  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device; skipped (and reported as "
                            "skipped) where there is none")


@pytest.fixture(autouse=True)
def stop_signal_handlers_put_back():
    """Ctrl-C's and SIGTERM's handlers as each test found them: one a test leaves (a script's
    main run in this process installs its own) reached the next test of the same worker,
    which then depended on the order xdist gave it."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        if handler is not None:  # None: one not set from Python, which cannot be put back
            signal.signal(sig, handler)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# One colour per class: a small CNN separates these in an epoch or two, so a training
# run on them must reach high accuracy.
PALETTE = torch.tensor([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                        [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230],
                        [128, 128, 0], [0, 0, 128]], dtype=torch.float32)


def synthetic_images(n_per_class, seed):
    """uint8 NCHW images whose colour says their class, with noise and a random bright square
    (so crops and flips change them), plus their int64 labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(10).repeat_interleave(n_per_class)
    noise = 40 * torch.randn(len(labels), 3, 32, 32, generator=g)
    images = PALETTE[labels][:, :, None, None] + noise
    for i in range(len(labels)):
        y, x = torch.randint(0, 24, (2,), generator=g).tolist()
        images[i, :, y:y + 8, x:x + 8] = 255
    return images.clamp(0, 255).to(torch.uint8), labels


def write_image_folder(root, n_train=12, n_test=4, ext="png", seed=0):
    """An ImageFolder root (train/<class>/, test/<class>/); returns the images written."""
    written = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = synthetic_images(n, s)
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = Path(root) / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{i:05d}.{ext}"
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, quality=95)
        written[split] = (images, labels)
    return written


def write_torchvision_layout(root, n_train=10, n_test=4, seed=0):
    """torchvision's cifar-10-batches-py pickles (5 train batches + test batch + meta)."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for split, n, s in (("train", n_train, seed), ("test", n_test, seed + 1)):
        images, labels = synthetic_images(n, s)
        written[split] = (images, labels)
        rows = images.reshape(len(images), -1).numpy()  # CIFAR's rows: R, G, B planes of 32x32
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        for chunk, name in zip(np.array_split(np.arange(len(images)), len(names)), names):
            with open(folder / name, "wb") as f:
                pickle.dump({"data": rows[chunk], "labels": labels[chunk].tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(CLASSES)}, f)
    return written


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A 30-per-class PNG ImageFolder root, shared by the CLI tests (read-only)."""
    root = tmp_path_factory.mktemp("cifar_png")
    write_image_folder(root, n_train=30, n_test=5)
    return root


@pytest.fixture(scope="session")
def teacher_checkpoint(image_folder, tmp_path_factory):
    """A finished (dry-run) teacher checkpoint on the synthetic set, shared read-only."""
    out = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    run_script("train_teacher.py", "--dry-run", "--data-root", image_folder, "--out", out,
               "--plots-dir", out.parent)
    return out


# What the lent GPU machine lacks of requirements.txt: it has torch, torchvision, numpy,
# pandas, matplotlib, tqdm, tabulate and pytest, and no network.
NOT_ON_THE_GPU_MACHINE = ("scipy", "statsmodels", "submitit", "cloudpickle")


def like_the_gpu_machine(folder):
    """A PYTHONPATH (made in `folder`) for a Python like the lent GPU machine's: none of
    NOT_ON_THE_GPU_MACHINE can be imported."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for package in NOT_ON_THE_GPU_MACHINE:
        (folder / f"{package}.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{package}'\", name='{package}')\n")
    return str(folder)


def on_cpu(flags):
    """`flags` with --device cpu unless they name a device: the suite runs on the CPU, where
    its exact-equality checks hold, even on a machine with a GPU (tests marked `cuda` say
    otherwise)."""
    flags = [str(f) for f in flags]
    return flags if "--device" in flags else [*flags, "--device", "cpu"]


def interrupted_run(script, flags, step, sig="SIGTERM", at="kd.engine.check_interrupt"):
    """Run `script` with `flags` and a real signal `sig` delivered just before the `step`-th
    call of `at` (by default: right after optimizer step `step`), via tests/interrupt_at.py;
    checks that it exited 130 and returns the CompletedProcess."""
    if script != "report.py":  # the only script without a device: it reads results.csv
        flags = on_cpu(flags)
    proc = subprocess.run([sys.executable, "tests/interrupt_at.py", sig, at, str(step), script,
                           *map(str, flags)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 130, proc.stderr[-3000:]
    return proc


def full_and_resumed_runs(script, flags, folder, epochs, step):
    """Run `script` with `flags` to the end in folder/full.pt, and again in folder/cut.pt
    interrupted by SIGTERM after optimizer step `step` (mid-epoch) and then resumed; returns
    both paths."""
    run_script(script, *flags, "--out", folder / "full.pt")
    cut = folder / "cut.pt"
    interrupted_run(script, [*flags, "--out", cut], step)
    assert 1 <= load_checkpoint(cut)["epoch"] < epochs
    run_script(script, *flags, "--out", cut, "--resume")
    return folder / "full.pt", cut


def run_script(script, *flags, check=True):
    """Run a script from the shell as a user would; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, script, *on_cpu(flags)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


def run_in_process(script, *flags, interrupt_at=None):
    """`script`'s main() with `flags`, in this process: no interpreter start and imports to
    pay for, and no run_cli around it (a bad flag or a Ctrl-C comes out as its exception).
    With `interrupt_at`, a Ctrl-C (the KeyboardInterrupt the scripts' signal handlers
    raise) at that call of the loop's interrupt check, which comes after every optimizer
    step and after every epoch's checkpoint."""
    module = importlib.import_module(Path(script).stem)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [script, *on_cpu(flags)])
        if interrupt_at is not None:
            calls = [0]

            def check_interrupt():
                calls[0] += 1
                if calls[0] == interrupt_at:
                    raise KeyboardInterrupt
            patch.setattr(engine, "check_interrupt", check_interrupt)
        module.main()


def write_run(folder, name, loss, seed, test_acc, val_acc=50.0, tested_epoch=2, **recipe):
    """A student run's records as a 2-epoch run leaves them (config, metrics, and a test
    record of `tested_epoch` unless test_acc is None), with no checkpoint: for the tables."""
    config = {"run_id": name, "model": {"name": "student", "arch_args": {"widths": [32, 64]}},
              "loss": loss, "temperature": 4.0, "alpha": 0.9, "seed": seed,
              "train_subset": None, "batch_size": 256, "lr": 0.1, "weight_decay": 5e-4,
              "epochs": 2, **recipe}
    (folder / f"{name}.config.json").write_text(json.dumps(config))
    pd.DataFrame([{"epoch": 1, "val_acc": val_acc - 5, "val_loss": 1.0, "epoch_seconds": 30,
                   "images_per_second": 100},
                  {"epoch": 2, "val_acc": val_acc, "val_loss": 0.9, "epoch_seconds": 30,
                   "images_per_second": 300}]).to_csv(folder / f"{name}.metrics.csv", index=False)
    if test_acc is not None:
        (folder / f"{name}.test.json").write_text(json.dumps(
            {"run_id": name, "epoch": tested_epoch, "test_acc": test_acc}))
