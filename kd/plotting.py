"""Figures: training curves of a run, the students compared, and sample images."""
import json
import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (CI, SSH sessions)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from PIL import Image  # noqa: E402

from kd.records import replace_atomically  # noqa: E402
from kd.results import (  # noqa: E402
    MEAN_TEACHER_VARIANTS,
    is_mean_teacher_run,
    is_student_run,
    is_teacher_run,
    join_label,
    label_settings,
    recipe_labels,
    run_variant,
    unfinished,
)

# What a first drawing would import, imported now: a Ctrl-C that lands in the import of a
# compiled module (matplotlib's Agg renderer) leaves it unable to initialise again in this
# process, so the figure drawn as the run stops would fail. At start-up an interrupt ends
# the script in one line (kd.startup).
plt.switch_backend("Agg")
Image.preinit()  # the PNG writer and the other formats Pillow loads on a first save

LEGEND_ROWS = 20  # at fontsize 8 in a 4-inch-high figure
LEGEND_INCHES_PER_CHAR = 0.05  # a legend column's width at fontsize 8, its line included


def plot_curves(history, path, title, second_model="EMA"):
    """Loss and accuracy per epoch, train and validation, side by side, and the validation
    of the run's second model (`ema_val` columns), named `second_model`: its EMA, or a
    mean-teacher run's teacher. A distilling run's training objective (KD term included) is
    not on the scale of a cross-entropy, so its cross-entropy part is drawn beside it: that
    is the line to compare with validation."""
    df = pd.DataFrame(history)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    distilling = "train_ce" in df
    splits = [("train", "-", "C0"), ("val", "--", "C1")]
    splits += [("ema_val", ":", "C2")] * ("ema_val_acc" in df)
    for split, style, color in splits:
        label = split.replace("ema_val", f"{second_model} val")
        loss_label = "train objective (with its KD term)" if distilling and split == "train" \
            else label
        ax_loss.plot(df["epoch"], df[f"{split}_loss"], style, color=color, marker="o", ms=3,
                     label=loss_label)
        ax_acc.plot(df["epoch"], df[f"{split}_acc"], style, color=color, marker="o", ms=3,
                    label=label)
    if distilling:
        ax_loss.plot(df["epoch"], df["train_ce"], "-.", color="C0", marker="x", ms=3,
                     label="train cross-entropy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy" + (" (objective: its own scale)"
                                                          if distilling else ""),
                title=f"{title}: loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title}: accuracy")
    style_axes(ax_loss, ax_acc)
    save(fig, path)


def run_records(runs_dir, keep):
    """(config, metrics DataFrame) of every run in `runs_dir` whose config `keep` accepts: a
    run is known by its records, not its name (a sweep names its runs as it likes)."""
    for metrics in sorted(Path(runs_dir).glob("*.metrics.csv")):
        path = Path(str(metrics).replace(".metrics.csv", ".config.json"))
        if path.is_file() and keep(config := json.loads(path.read_text())):
            yield config, pd.read_csv(metrics)


def labelled_records(runs_dir, keep):
    """(settings, config, metrics) of every run `keep` accepts, where `settings` is what
    sets its recipe apart from other runs of its variant ("" if nothing: seeds of one recipe
    are pooled, different recipes never are, nor a stopped run with finished ones)."""
    records = list(run_records(runs_dir, keep))
    variants = [run_variant(config) for config, _ in records]
    labels = recipe_labels(list(zip(variants, (config for config, _ in records))))
    for i, (config, df) in enumerate(records):
        if stopped := unfinished(int(df["epoch"].max()) if len(df) else 0, config.get("epochs")):
            variant, settings = label_settings(labels[i])
            labels[i] = join_label(variant, [*settings, stopped])
    return [(label[len(variant):], config, df)
            for label, variant, (config, df) in zip(labels, variants, records)]


def plot_compare(runs_dir, path):
    """Validation loss and accuracy of every student variant with a run in `runs_dir`, and
    of its EMA weights (dashed) where the run kept them."""
    plot_mean_curves(student_curves(runs_dir), path, "students")


def student_curves(runs_dir):
    """label -> [(metrics, column prefix)]: one label per variant and recipe, e.g. `kd+ce`,
    `kd+ce+ls` (never pooled with `kd+ce`), `kd+ce EMA`."""
    return run_curves(runs_dir, is_student_run)


def plot_teachers(runs_dir, path):
    """Validation loss and accuracy of the teacher runs in `runs_dir`, over their seeds, and
    of their EMA weights (dashed); each run's own curves, its training ones included, are
    in its `<name>_curves.png`."""
    plot_mean_curves(teacher_curves(runs_dir), path, "teachers")


def teacher_curves(runs_dir):
    """label -> [(metrics, column prefix)]: `teacher` and `teacher EMA`, one pair per recipe."""
    return run_curves(runs_dir, is_teacher_run)


def run_curves(runs_dir, keep):
    """label -> [(metrics, column prefix)] of the runs `keep` accepts: one label per variant
    and recipe, and one for its EMA weights where the runs kept them."""
    curves = {}
    for settings, config, df in labelled_records(runs_dir, keep):
        variant = run_variant(config)
        curves.setdefault(variant + settings, []).append((df, "val"))
        if "ema_val_acc" in df:
            curves.setdefault(f"{variant} EMA{settings}", []).append((df, "ema_val"))
    return curves


def plot_ema_compare(runs_dir, path):
    """The mean-teacher student's validation curves for each kind of teacher."""
    plot_mean_curves(mean_teacher_curves(runs_dir), path, "mean-teacher")


def mean_teacher_curves(runs_dir):
    """label -> [(metrics, column prefix)]: one label per kind of teacher and recipe."""
    curves = {}
    for settings, config, df in labelled_records(runs_dir, is_mean_teacher_run):
        label = MEAN_TEACHER_VARIANTS.get(run_variant(config), run_variant(config))
        curves.setdefault(f"student, {label}{settings}", []).append((df, "val"))
    return curves


def plot_mean_curves(curves, path, title):
    """Validation loss and accuracy per epoch, one line per label: the mean over its runs
    (seeds), with a band of +-1 std where there are several; the EMA weights' curves (prefix
    `ema_val`) are dashed in their variant's colour. curves: label -> [(df, prefix)]."""
    if not curves:
        return
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
    colours = {}
    for label, runs in sorted(curves.items()):
        ema = runs[0][1] == "ema_val"  # the EMA weights' columns, not a label that says EMA
        base = label.replace(" EMA", "", 1) if ema else label
        colour = colours.setdefault(base, f"C{len(colours) % 10}")
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
            frames = [df[["epoch", f"{prefix}_{metric}"]].set_axis(["epoch", metric], axis=1)
                      for df, prefix in runs]
            per_epoch = pd.concat(frames).groupby("epoch")[metric]
            mean, std = per_epoch.mean(), per_epoch.std().fillna(0)
            ax.plot(mean.index, mean, marker="o", ms=3, color=colour,
                    linestyle="--" if ema else "-",
                    label=f"{label} ({len(runs)} run{'s' * (len(runs) > 1)})")
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.15, color=colour)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title=f"{title}: validation loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title}: validation accuracy")
    style_axes(ax_loss, ax_acc, legend=False)
    # one legend, beside the axes: inside them it hides the curves it names; a column per
    # LEGEND_ROWS lines, as a folder filled by sweeps holds dozens and one column outgrows
    # the figure (constrained layout makes room for it, where tight_layout gives up)
    handles, labels = ax_acc.get_legend_handles_labels()
    columns = math.ceil(len(labels) / LEGEND_ROWS)
    fig.set_size_inches(12 + columns * LEGEND_INCHES_PER_CHAR * max(map(len, labels)), 4)
    fig.legend(handles, labels, loc="outside right center", fontsize=8, ncols=columns)
    save(fig, path)


def plot_length(runs, path, title="the student by training length"):
    """Test accuracy (solid, bars: ± 1 std over seeds) and, where the runs recorded it, clean
    training accuracy (dashed: eval mode, the images trained on) against training length,
    one colour per method: what a longer schedule buys, and from the gap whether the student
    still underfits. `runs`: one row per run with `method`, `epochs`, `test_acc` (and
    `train_acc`). The minutes stay in the tables beside it: runs from several machines would
    mix them on one axis."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (method, rows) in enumerate(runs.groupby("method", sort=False)):
        per_length = rows.groupby("epochs")
        test = per_length["test_acc"]
        # a method's settings wrapped below its name: long labels would squeeze the axes
        label = textwrap.fill(method, 34, subsequent_indent="  ")
        ax.errorbar(test.mean().index, test.mean(), yerr=test.std().fillna(0), marker="o",
                    capsize=3, color=f"C{i % 10}", label=label)
        if "train_acc" in rows and rows["train_acc"].notna().any():
            train = per_length["train_acc"].mean().dropna()
            ax.plot(train.index, train, "--", color=f"C{i % 10}", alpha=0.6)
    ax.set_xscale("log")  # 12, 36, 96 epochs: each a few times the last
    epochs = sorted(runs["epochs"].unique())
    ax.set_xticks(epochs, [str(e) for e in epochs])
    ax.minorticks_off()
    ax.set(xlabel="training epochs (the one-cycle schedule stretched)",
           ylabel="accuracy (%): test (solid), clean training (dashed)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    save(fig, path)


def plot_confusion(confusion, class_names, path, title):
    """A confusion matrix (rows: true class, columns: predicted) as percentages of each true
    class, with the percentages written in the cells."""
    counts = confusion.double()
    percent = 100 * counts / counts.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            ax.text(j, i, f"{percent[i, j]:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if percent[i, j] > 50 else "black")
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set(xlabel="predicted", ylabel="true class", title=title)
    fig.colorbar(image, ax=ax, label="% of the true class")
    save(fig, path)


def plot_per_class(per_class, path, title):
    """Accuracy (%) per class (columns of `per_class`) for each row (a variant), as a table of
    coloured cells with their numbers: bars stop being readable past a handful of variants."""
    values = per_class.to_numpy()
    fig, ax = plt.subplots(figsize=(1.0 * values.shape[1] + 3, 0.32 * len(values) + 1.2))
    image = ax.imshow(values, cmap="viridis", vmin=max(0, values.min()), vmax=100,
                      aspect="auto")
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, f"{value:.0f}", ha="center", va="center", fontsize=7,
                color="white" if value < (values.min() + 100) / 2 else "black")
    ax.set_xticks(range(values.shape[1]), per_class.columns, rotation=30)
    ax.set_yticks(range(len(values)), per_class.index, fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    save(fig, path)


def plot_samples(images, labels, class_names, path):
    """A row of uint8 CHW images with their class names."""
    fig, axes = plt.subplots(1, len(images), figsize=(1.3 * len(images), 1.7))
    for ax, image, label in zip(axes, images, labels):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(class_names[int(label)], fontsize=8)
        ax.axis("off")
    save(fig, path)


def style_axes(*axes, legend=True):
    for ax in axes:
        low, high = ax.get_xlim()
        if high - low < 2:  # one epoch: the locator would fall back to fractions of it
            ax.set_xticks(range(math.ceil(low), math.floor(high) + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if legend:
            ax.legend()


def save(fig, path):
    path = Path(path)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    # Replaced whole: runs that end together each redraw the shared comparison figures.
    try:
        replace_atomically(path, lambda tmp: fig.savefig(  # legends beside the axes included
            tmp, format=path.suffix.lstrip("."), dpi=110, bbox_inches="tight"))
    finally:  # a failed save (a full disk) must not leave the figure open
        plt.close(fig)
