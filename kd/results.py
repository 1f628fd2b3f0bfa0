"""Tables of results shared by evaluate.py, experiments/summarize.py, sweep.py and the comparison
figures: which variant a run is, which runs share a recipe (and so may be pooled over seeds),
and the mean ± std of their test accuracy."""
import json
from pathlib import Path

import pandas as pd

from kd.records import test_record_matches

# The order tables list variants in: the teacher, the students, then the mean-teacher runs
# (model-ema: runs from before every script kept an EMA).
VARIANT_ORDER = ("teacher", "teacher EMA", "kd+ce", "kd+ce EMA", "kd", "kd EMA", "dkd", "dkd EMA",
                 "dist", "dist EMA", "kd+ce+ls", "kd+ce+ls EMA", "kd+ls", "kd+ls EMA",
                 "dkd+ls", "dkd+ls EMA", "ce", "ce EMA",
                 "mean-teacher", "mean-teacher EMA", "mean-teacher-no-averaging",
                 "mean-teacher-no-averaging EMA", "mean-teacher-no-ema",
                 "mean-teacher-no-ema EMA", "model-ema", "model-ema EMA")


# Config entries that say where, how or as which repeat a run was made, not what it is.
NOT_RECIPE = {"seed", "out", "plots_dir", "data_root", "device", "resume", "overwrite",
              "restart_if_changed", "skip_test", "compile", "git_commit", "git_dirty",
              "torch_version", "schedule_start_epoch", "run_id", "default_epochs", "model",
              "teacher", "teacher_identity", "data_identity", "machine"}


# Per student loss, the flags that play no part in it (so runs differing in them are alike).
_DKD, _DIST = ("dkd_alpha", "dkd_beta", "dkd_warmup"), ("dist_beta", "dist_gamma")
UNUSED_BY = {"ce": ("temperature", "alpha", "logit_standardize") + _DKD + _DIST,
             "kd": ("alpha",) + _DKD + _DIST, "kd+ce": _DKD + _DIST,
             "dkd": ("alpha",) + _DIST, "dist": ("alpha", "logit_standardize") + _DKD}


def variant_rank(label):
    variant = label.split(" (")[0]  # a label's variant, without the settings that tell apart
    return VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)


def recipe(config):
    """What defines a run besides its seed: every config entry but NOT_RECIPE, the widths,
    the teacher by its weights' hash and the data by theirs."""
    flat = {k: v for k, v in config.items()
            if k not in NOT_RECIPE and k not in UNUSED_BY.get(config.get("loss"), ())}
    flat["widths"] = (config.get("model") or {}).get("arch_args", {}).get("widths")
    flat["teacher"] = (config.get("teacher_identity") or {}).get("sha256", "")[:12] or None
    flat["data"] = (config.get("data_identity") or {}).get("sha256", "")[:12] or None
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flat.items()}


def recipe_labels(runs):
    """One label per (variant, config) in `runs`: the variant, followed by the settings in
    which its recipe differs from other runs of that variant, e.g. "kd+ce (temperature=2.0)".
    Runs of one recipe (seeds) share a label; runs of different recipes never do."""
    recipes = [recipe(config) for _, config in runs]
    labels = []
    for (variant, _), mine in zip(runs, recipes):
        keys = sorted({key for (other_variant, _), other in zip(runs, recipes)
                       if other_variant == variant
                       for key in set(mine) | set(other) if mine.get(key) != other.get(key)})
        settings = ", ".join(f"{key}={mine.get(key)}" for key in keys)
        labels.append(f"{variant} ({settings})" if settings else variant)
    return labels


def run_variant(config, ema=False):
    """The variant a run's config describes: `teacher`, the student loss (`kd+ce`, `kd`, `ce`),
    or the mean-teacher setting (`mean-teacher`, `mean-teacher-no-ema`: the teacher frozen,
    `mean-teacher-no-averaging`: decay 0); with `ema`, the EMA model of that run (`... EMA`;
    for mean-teacher, its teacher)."""
    if "mode" in config:  # a train_ema.py run (mode model-ema: from before every run had EMA)
        variant = config["mode"] + ("-no-ema" if config["no_ema"] else
                                    "-no-averaging" if config.get("ema_decay") == 0 else "")
    elif "loss" in config:  # +ls: with logit standardization
        variant = config["loss"] + ("+ls" if config.get("logit_standardize") else "")
    else:  # the teacher, or a bare checkpoint known by its model alone
        variant = config["model"]["name"]
    return variant + " EMA" * ema


def mean_teacher_teacher(variant):
    """"<mean-teacher variant>: its teacher" for the `EMA` variant of a mean-teacher run,
    whose EMA model is the teacher (frozen at its random start for -no-ema), else None."""
    if variant.startswith("mean-teacher") and variant.endswith(" EMA"):
        return f"{variant.removesuffix(' EMA')}: its teacher"
    return None


def seed_table(runs, keys, column="test_acc"):
    """Mean ± std (sample std, ddof=1) of `column` over the runs (seeds) sharing `keys`;
    runs without a value there are left out."""
    tested = runs.dropna(subset=[column])
    table = tested.groupby(keys, dropna=False, sort=False)[column]
    table = table.agg(["mean", "std", "count"]).reset_index()
    table[column] = [f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"
                     for m, s, n in zip(table["mean"], table["std"], table["count"])]
    return table.rename(columns={"count": "seeds"})[keys + ["seeds", column]]


def run_table(folders):
    """One row per run whose records are in `folders` (its last epoch; its test accuracy only
    if the test record is of this run and epoch), plus a row for its EMA where it kept one;
    variants are labelled by what tells their recipes apart."""
    rows, configs = [], []
    for folder in folders:
        for metrics in sorted(Path(folder).glob("*.metrics.csv")):
            stem = str(metrics)[:-len(".metrics.csv")]
            config = json.loads(Path(f"{stem}.config.json").read_text())
            history = pd.read_csv(metrics)
            last = history.iloc[-1]
            # Only a test record of this very run and epoch counts.
            test = (json.loads(Path(f"{stem}.test.json").read_text())
                    if test_record_matches(f"{stem}.test.json", config.get("run_id"),
                                           int(last["epoch"])) else {})
            variant = run_variant(config)
            unused = UNUSED_BY.get(config.get("loss"), ())
            row = {
                "run": Path(stem).name, "model": config["model"]["name"], "variant": variant,
                "widths": " ".join(map(str, config["model"]["arch_args"]["widths"])),
                "images": config["train_subset"] or 45000, "epochs": int(last["epoch"]),
                "batch": config["batch_size"], "lr": config["lr"], "wd": config["weight_decay"],
                # T and alpha only where the run's loss uses them
                "T": None if "temperature" in unused else config.get("temperature"),
                "alpha": None if "alpha" in unused else config.get("alpha"),
                "seed": config["seed"],
                "val_acc": round(last["val_acc"], 2), "val_loss": round(last["val_loss"], 4),
                "test_acc": test.get("test_acc"),
                "minutes": round(history["epoch_seconds"].sum() / 60, 1),
                "img/s": round(history["images_per_second"].median())}
            rows.append(row)
            configs.append(config)
            if "ema_val_acc" in history:  # the EMA model of the same run, as a row of its own
                rows.append({**row, "run": row["run"] + " (EMA)",
                             "variant": run_variant(config, ema=True),
                             "val_acc": round(last["ema_val_acc"], 2),
                             "val_loss": round(last["ema_val_loss"], 4),
                             "test_acc": test.get("ema_test_acc")})
                configs.append(config)
    runs = pd.DataFrame(rows)
    # Runs that differ in anything but the seed are separate variants, named by what differs.
    runs["variant"] = recipe_labels(list(zip(runs["variant"], configs)))
    return runs
