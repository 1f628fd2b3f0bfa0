"""Figures: training curves of a run, the students compared, and sample images."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed (CI, SSH sessions)
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_curves(history, path, title):
    """Loss and accuracy per epoch, train and validation, side by side."""
    df = pd.DataFrame(history)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for split, style in (("train", "-"), ("val", "--")):
        ax_loss.plot(df["epoch"], df[f"{split}_loss"], style, marker="o", ms=3, label=split)
        ax_acc.plot(df["epoch"], df[f"{split}_acc"], style, marker="o", ms=3, label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy" if "train_kd" not in df else "loss",
                title=f"{title}: loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title}: accuracy")
    style_axes(ax_loss, ax_acc)
    save(fig, path)


def plot_compare(runs_dir, path):
    """Validation accuracy and loss per epoch of every student variant with a run in
    `runs_dir`: the mean over its seeds, with a band of +-1 std where there are several."""
    runs = {}
    for metrics in sorted(Path(runs_dir).glob("student_*.metrics.csv")):
        config = Path(str(metrics).replace(".metrics.csv", ".config.json"))
        if config.is_file():
            variant = json.loads(config.read_text())["loss"]
            runs.setdefault(variant, []).append(pd.read_csv(metrics))
    if not runs:
        return
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for variant, frames in sorted(runs.items()):
        for ax, column in ((ax_loss, "val_loss"), (ax_acc, "val_acc")):
            per_epoch = pd.concat(frames).groupby("epoch")[column]
            mean, std = per_epoch.mean(), per_epoch.std().fillna(0)
            line, = ax.plot(mean.index, mean, marker="o", ms=3,
                            label=f"{variant} ({len(frames)} run{'s' * (len(frames) > 1)})")
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.2, color=line.get_color())
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="students: validation loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="students: validation accuracy")
    style_axes(ax_loss, ax_acc)
    save(fig, path)


def plot_samples(images, labels, class_names, path):
    """A row of uint8 CHW images with their class names."""
    fig, axes = plt.subplots(1, len(images), figsize=(1.3 * len(images), 1.7))
    for ax, image, label in zip(axes, images, labels):
        ax.imshow(image.permute(1, 2, 0).numpy())
        ax.set_title(class_names[int(label)], fontsize=8)
        ax.axis("off")
    save(fig, path)


def style_axes(*axes):
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()


def save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
