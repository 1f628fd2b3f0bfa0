"""Evaluate trained models on the CIFAR-10 test set and compare them as someone deciding what
to deploy would: accuracy, parameters, MACs, CPU latency and throughput.

    python evaluate.py                        # every checkpoints/*.pt
    python evaluate.py checkpoints/teacher.pt checkpoints/student_kd+ce_seed0.pt

Each model is rebuilt from its checkpoint alone and evaluated without augmentation, in eval
mode, on the test set, the validation split and the training images its run trained on
(`train_acc`: does it underfit?). A run that kept an EMA of its weights (every script by
default) gives two rows: its model (weights `raw`) and its EMA (weights `ema`; for a
mean-teacher run, train_ema.py, that is its teacher, named `<variant> teacher`). Writes,
in --plots-dir:
  results.csv             one row per model, per-class test accuracies and the teacher a
                          student learned from included
  predictions.csv         per test image (rows, in the test set's order) and model (columns
                          "<checkpoint> (<weights>)"): 1 if the model got it right, else 0;
                          report.py compares two single runs with it (McNemar's test)
  results.md              mean ± std over seeds per variant, then every model
  confusion_<name>.png    the teacher and the student with the best validation accuracy
  per_class_accuracy.png  per-class test accuracy of every variant (mean over seeds)
"""
import kd.startup  # noqa: F401  (first: a Ctrl-C during the imports below is one line)

# isort: split
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from kd import cli, engine, plotting
from kd.checkpoints import load_checkpoint
from kd.data import CLASSES, VAL_SIZE, BatchLoader, load_cifar10, split_train_val
from kd.device import machine_name, select_device
from kd.interrupts import check_interrupt
from kd.records import prediction_column, write_text
from kd.results import (
    join_label,
    label_settings,
    recipe_labels,
    run_variant,
    seed_table,
    training_minutes,
    unfinished,
    variant_rank,
)
from kd.runs import describe_data, make_folder, recorded_identity, same_data
from models import IMAGE_SHAPE, count_macs, model_from_checkpoint, model_spec

LATENCY_CALLS = 20  # one-image forward calls per timed run: one call is well under 1 ms
TIMED_RUNS = 7
SUMMARY_COLUMNS = ["checkpoint", "weights", "model", "variant", "seed", "epochs", "train_acc",
                   "val_acc", "test_loss", "test_acc", "params", "macs", "latency_ms",
                   "images_per_s", "train_minutes"]
DEPLOY_KEYS = ["model", "variant", "epochs", "params", "macs", "latency_ms", "images_per_s"]


def median_seconds(fn, runs=TIMED_RUNS, warmup=2):
    """Median wall time of `fn()` over `runs` timed calls after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def cpu_speed(model, batch_size):
    """(ms per image at batch 1, images/s at `batch_size`) of `model`'s forward pass on the
    CPU in eval mode, with channels_last inputs as in training."""
    model = copy.deepcopy(model).cpu().eval().to(memory_format=torch.channels_last)
    one, batch = (torch.rand(n, *IMAGE_SHAPE).contiguous(memory_format=torch.channels_last)
                  for n in (1, batch_size))
    latency = median_seconds(lambda: [model(one) for _ in range(LATENCY_CALLS)])
    return 1000 * latency / LATENCY_CALLS, batch_size / median_seconds(lambda: model(batch))


def checkpoint_paths(given):
    """The checkpoints to evaluate, each file once however it is named (`a.pt`, `./a.pt`, a
    link to it, hard or symbolic): a file twice would count as two seeds in the tables."""
    def identity(path):
        try:
            found = os.stat(path)
        except OSError:  # said "not found" when it is loaded
            return Path(path).resolve()
        return found.st_dev, found.st_ino

    unique = {}
    for path in given:
        unique.setdefault(identity(path), path)
    if unique:
        return list(unique.values())
    paths = sorted(map(str, Path("checkpoints").glob("*.pt")))
    if not paths:
        raise cli.UserError("no checkpoints given and none in checkpoints/; train some "
                               "first (make all) or name the files")
    # said, as a list that came out empty ($(sweep.py ... --finished)) lands here too
    print(f"no checkpoints named: evaluating the {len(paths)} in checkpoints/",
          file=sys.stderr)
    return paths


def load_models(paths, device):
    """[(path, weights, model, checkpoint without its training state)] for every model in
    `paths`; every file is read and checked before any evaluation starts."""
    models = []
    for path in paths:
        ckpt = load_checkpoint(path, map_location=device)
        for ema in (False, True) if "ema" in ckpt else (False,):
            model = model_from_checkpoint(ckpt, path, device, ema=ema)
            info = {k: ckpt.get(k) for k in ("config", "epoch", "epochs", "history")}
            info["config"] = info["config"] or {"model": ckpt["model"]}  # a bare checkpoint
            models.append((path, "ema" if ema else "raw", model, info))
    return models


def check_data(models, data, root):
    """Refuses, in one line, a run trained on other data than `data` (another copy or order
    gives another validation split, which would hold the run's own training images). A bare
    checkpoint records none, so it cannot be checked."""
    now = recorded_identity(data)
    for path, _, _, info in models:
        then = info["config"].get("data_identity")
        if then is not None and not same_data(then, now):
            raise cli.UserError(f"{path} was trained on other data ({describe_data(then)}) "
                                f"than --data-root {root} gives ({describe_data(now)})")


def evaluate_test(model, loader, device):
    """engine.evaluate on the test images, plus which of them (in order) the model got right:
    a forward hook keeps each batch's predictions, so the images pass through once."""
    predicted = []
    hook = model.register_forward_hook(lambda _m, _i, logits: predicted.append(logits.argmax(1)))
    try:
        test = engine.evaluate(model, loader, device)
    finally:
        hook.remove()
    return test, (torch.cat(predicted) == loader.labels).cpu()


def evaluate_all(models, loaders, device, batch_size):
    """One row per model, its test confusion matrix and its per-image test correctness.
    `loaders`: "test", "val", and "train": {--train-subset of a run (None: all): a loader of
    the training images that run trained on}."""
    rows, confusions, corrects, costs = [], [], [], {}
    for path, weights, model, info in tqdm(models, desc="evaluating", unit="model"):
        config = info["config"]
        test, correct = evaluate_test(model, loaders["test"], device)
        val = engine.evaluate(model, loaders["val"], device)
        train = engine.evaluate(model, loaders["train"][config.get("train_subset")], device)
        spec = model_spec(model)
        arch = (spec["name"], tuple(spec["arch_args"]["widths"]))
        if arch not in costs:  # MACs and speed depend on the architecture, not the weights
            costs[arch] = (count_macs(model), *cpu_speed(model, batch_size))
        macs, latency_ms, images_per_s = costs[arch]
        per_class = 100 * test["confusion"].diag() / test["confusion"].sum(1).clamp(min=1)
        history = info["history"] or []
        rows.append({
            "checkpoint": path, "weights": weights, "model": arch[0],
            "variant": run_variant(config, ema=weights == "ema"), "seed": config.get("seed"),
            **teacher_columns(config),
            "epochs": info["epoch"], "train_acc": train["acc"], "val_acc": val["acc"],
            "test_loss": test["loss"],
            "test_acc": test["acc"], "params": sum(p.numel() for p in model.parameters()),
            "macs": macs, "latency_ms": latency_ms, "images_per_s": images_per_s,
            "train_minutes": training_minutes(r["epoch_seconds"] for r in history
                                              if "epoch_seconds" in r),
            "peak_memory_mb": max((r["peak_memory_mb"] for r in history
                                   if "peak_memory_mb" in r), default=None),
            **provenance(config),
            **{f"acc_{name}": float(acc) for name, acc in zip(CLASSES, per_class)}})
        confusions.append(test["confusion"])
        corrects.append(correct)
        check_interrupt()  # a Ctrl-C whose exception a finalizer swallowed: stop, write nothing
    results = pd.DataFrame(rows)
    results["teacher_seed"] = results["teacher_seed"].astype("Int64")  # 1, not 1.0, beside blanks
    # Runs that differ in anything but the seed are separate variants, named by what differs.
    results["variant"] = recipe_labels([(variant, info["config"]) for variant, (*_, info)
                                        in zip(results["variant"], models)])
    # An unfinished run shares its recipe with its finished seeds: labelled apart, so that
    # report.py does not pool it into their mean ± std, tests or training lengths.
    for i, (path, _, _, info) in enumerate(models):
        if stopped := unfinished(info["epoch"], info["epochs"]):
            variant, settings = label_settings(results.at[i, "variant"])
            results.at[i, "variant"] = join_label(variant, [*settings, stopped])
            print(f"note: {path}: {stopped}, labelled apart from the finished runs")
    order = sorted(results.index, key=lambda i: (variant_rank(results.at[i, "variant"]),
                                                 results.at[i, "checkpoint"]))
    return (results.loc[order].reset_index(drop=True), [confusions[i] for i in order],
            [corrects[i] for i in order])


def predictions_table(results, corrects):
    """predictions.csv's table: a 0/1 column per model, a row per test image."""
    return pd.DataFrame({prediction_column(row.checkpoint, row.weights): correct.int().numpy()
                         for row, correct in zip(results.itertuples(), corrects)})


def teacher_columns(config):
    """Which teacher a student learned from (blank for a run without one): its seed, where
    the student recorded it (since issue 26), and the hash of its weights."""
    teacher = config.get("teacher_identity") or {}
    return {"teacher_seed": teacher.get("seed"),
            "teacher_sha256": teacher.get("sha256", "")[:12] or None}


def provenance(config):
    """Where a run came from, as its config records it (empty for runs from before): the
    columns results.PROVENANCE names."""
    data = config.get("data_identity") or {}
    commit = config.get("git_commit") or ""
    subset = config.get("train_subset")
    return {"data_sha256": data.get("sha256", "")[:12],
            "train_images": f"first {subset:,} (--train-subset)" if subset else
            ("all" if data else None), "precision": config.get("precision"),
            "machine": config.get("machine"), "torch": config.get("torch_version"),
            "commit": commit[:10] + ("+changes" if commit and config.get("git_dirty") else "")}


def plot_results(results, confusions, plots_dir):
    """Confusion matrices of the teacher and of the student with the best validation accuracy
    (never chosen by a test score), and per-class accuracy of every variant."""
    written = []
    for kind in ("teacher", "student"):
        candidates = results[results["model"] == kind]
        if candidates.empty:
            continue
        best = candidates["val_acc"].idxmax()
        row = results.loc[best]
        name = Path(row["checkpoint"]).stem + "_ema" * (row["weights"] == "ema")
        path = Path(plots_dir) / f"confusion_{name}.png"
        plotting.plot_confusion(confusions[best], CLASSES, path,
                                f"{name}: test accuracy {row['test_acc']:.2f}%")
        written.append(path)
    per_class = results.groupby("variant", sort=False)[[f"acc_{c}" for c in CLASSES]].mean()
    seeds = results.groupby("variant", sort=False).size()
    per_class.index = [f"{v} ({n} run{'s' * (n > 1)})"
                       for v, n in seeds.items()]
    per_class.columns = list(CLASSES)
    path = Path(plots_dir) / "per_class_accuracy.png"
    plotting.plot_per_class(per_class, path, "per-class test accuracy (mean over runs)")
    return written + [path]


def markdown_tables(results, test_images, device, batch_size):
    shown = results[SUMMARY_COLUMNS].round({"train_acc": 2, "val_acc": 2, "test_loss": 4,
                                            "test_acc": 2, "latency_ms": 3,
                                            "images_per_s": 0, "train_minutes": 1})
    deploy = seed_table(shown, DEPLOY_KEYS, "train_acc").merge(
        seed_table(shown, DEPLOY_KEYS).drop(columns="seeds"), how="left", on=DEPLOY_KEYS)
    threads = torch.get_num_threads()
    return (f"# Results on the CIFAR-10 test set ({test_images:,} images)\n\n"
            f"Evaluated on {device}; latency (one image) and throughput (batch of "
            f"{batch_size}) are forward passes on this machine's "
            f"CPU ({machine_name(torch.device('cpu'))}, torch {torch.__version__}, "
            f"{threads} threads), median of {TIMED_RUNS} runs "
            f"after warm-up. `val_acc` is on the {VAL_SIZE:,} held-out training images, "
            f"`train_acc` on the training images each run trained on (the training split, or "
            f"its first N with --train-subset), in eval mode without augmentation: well above "
            f"`val_acc`, a model fits what it trained on better than new images; close to it "
            f"and far below 100%, it cannot fit even what it trained on.\n\n"
            f"## Per variant: training and test accuracy, mean ± std over seeds\n\n"
            f"{deploy.to_markdown(index=False)}\n\n"
            f"## Every model\n\n{shown.to_markdown(index=False)}\n")


def main():
    parser = cli.parser(__doc__)
    parser.fromfile_prefix_chars = "@"
    parser.add_argument("checkpoints", nargs="*",
                        help="checkpoint files, or @FILE: a file that lists them, one per line "
                             "(default: every checkpoints/*.pt)")
    cli.add_data_device_args(parser)
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per evaluation batch and per throughput measurement "
                             "(default: 256)")
    args = parser.parse_args()
    if args.batch_size < 1:
        raise cli.UserError(f"--batch-size must be positive, got {args.batch_size}")
    paths = checkpoint_paths(args.checkpoints)
    plots_dir = Path(args.plots_dir)
    make_folder(plots_dir, "--plots-dir")  # before the models are evaluated, not after
    device = select_device(args.device)
    models = load_models(paths, device)
    data = load_cifar10(args.data_root)
    check_data(models, data, args.data_root)
    _, val = split_train_val(data)
    # A run trained with --train-subset N is measured on the N images it trained on.
    subsets = {info["config"].get("train_subset") for *_, info in models}
    loaders = {"test": BatchLoader(data["test_images"], data["test_labels"], args.batch_size,
                                   device),
               "val": BatchLoader(*val, args.batch_size, device),
               "train": {n: BatchLoader(*split_train_val(data, n)[0], args.batch_size, device)
                         for n in subsets}}
    results, confusions, corrects = evaluate_all(models, loaders, device, args.batch_size)
    write_text(plots_dir / "results.csv", results.to_csv(index=False))
    write_text(plots_dir / "predictions.csv",
               predictions_table(results, corrects).to_csv(index=False))
    markdown = markdown_tables(results, len(data["test_labels"]), device, args.batch_size)
    write_text(plots_dir / "results.md", markdown)
    figures = plot_results(results, confusions, plots_dir)
    print(markdown)
    print("wrote " + ", ".join(map(str, [plots_dir / "results.csv", plots_dir / "predictions.csv",
                                         plots_dir / "results.md", *figures])))


if __name__ == "__main__":
    cli.run_cli(main, trains=False)
