"""Tables of results shared by evaluate.py, experiments/summarize.py, sweep.py and the comparison
figures: which variant a run is, which runs share a recipe (and so may be pooled over seeds),
and the mean ± std of their test accuracy."""
import hashlib
import json
import statistics
from pathlib import Path

import pandas as pd

import methods
from kd.data import TRAIN_SIZE
from kd.records import test_record_matches

# train_ema.py's variants, by the teacher the student learns from; the run's second model
# is that teacher (its EMA model, or the frozen copy), named "<variant> teacher".
MEAN_TEACHER_VARIANTS = {"mean-teacher": "teacher = EMA of the student",
                         "mean-teacher-no-averaging": "teacher = the student (decay 0)",
                         "mean-teacher-no-ema": "teacher frozen at its random start"}


# The provenance columns of results.csv (evaluate.provenance) and how the report names them.
PROVENANCE = {"data_sha256": "data (sha256)", "train_images": "training images",
              "machine": "trained on", "precision": "precision", "torch": "torch",
              "commit": "code (git commit)"}


# Recipe keys added after runs were made, with the value those runs had (a resumed
# checkpoint and a results table read them so); the methods' flags declare theirs
# (methods.Flag.before).
ADDED_RECIPE_KEYS = {"ema_decay": 0.0, "clip_grad_norm": 0.0, "schedule_start_epoch": 0,
                     **methods.flags_before()}


# Config entries that say where, how or as which repeat a run was made, not what it is.
NOT_RECIPE = {"seed", "out", "plots_dir", "data_root", "device", "resume", "overwrite",
              "restart_if_changed", "skip_test", "compile", "git_commit", "git_dirty",
              "torch_version", "run_id", "default_epochs", "model",
              "teacher", "teacher_identity", "data_identity", "machine", "cpu_threads",
              "no_shared_logits"}


def variant_order():
    """The order tables list variants in: the teacher, the students (methods.py's order),
    then the mean-teacher runs."""
    return ["teacher", *methods.variant_order(), *MEAN_TEACHER_VARIANTS]


def is_second_model(label):
    """Whether a label names a run's second model: its EMA, or a mean-teacher run's teacher."""
    return label.split(" (")[0].endswith((" EMA", " teacher"))


def variant_rank(label):
    """A label's place in variant_order(), each variant's second model (EMA or teacher)
    right after it; unknown variants last."""
    variant = label.split(" (")[0]  # without the settings that tell recipes apart
    base = variant.removesuffix(" EMA").removesuffix(" teacher")
    order = variant_order()
    return 2 * order.index(base) + (base != variant) if base in order else 2 * len(order)


def recipe(config):
    """What defines a run besides its seed: every config entry but NOT_RECIPE, the widths,
    the teacher by its recipe and the data by their hash. Students of teachers that differ
    only in their seed pool (each seed distilling from its own seed's teacher); a student
    recorded before teachers' recipes were (issue 26) knows its teacher by its weights. A
    setting added after a run was made counts at the value that run had
    (ADDED_RECIPE_KEYS)."""
    config = {**ADDED_RECIPE_KEYS, **config}
    flat = {k: v for k, v in config.items()
            if k not in NOT_RECIPE and k not in methods.unused_flags(config.get("loss"))}
    flat["widths"] = (config.get("model") or {}).get("arch_args", {}).get("widths")
    teacher = config.get("teacher_identity") or {}
    flat["teacher"] = (teacher.get("recipe_sha256") or teacher.get("sha256", ""))[:12] or None
    flat["data"] = (config.get("data_identity") or {}).get("sha256", "")[:12] or None
    return {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in flat.items()}


def recipe_sha256(config):
    """A fingerprint of the recipe a run's config describes: what a student records of its
    teacher's recipe (kd/runs.teacher_identity), alike for every seed of that recipe. The
    settings added later count only away from the value runs had before them, so a setting
    added tomorrow leaves today's fingerprints as they are."""
    flat = {k: v for k, v in recipe(config).items()
            if k not in ADDED_RECIPE_KEYS or v != ADDED_RECIPE_KEYS[k]}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()


def training_minutes(epoch_seconds):
    """A run's training time: each epoch at the run's median epoch time, so that a pause (a
    suspended laptop, a process stopped while the cores were needed) is not counted."""
    epoch_seconds = list(epoch_seconds)
    return statistics.median(epoch_seconds) * len(epoch_seconds) / 60 if epoch_seconds else 0.0


def label_settings(label):
    """A recipe_labels label split into its variant and its settings:
    "kd (epochs=36, temperature=2.0)" -> ("kd", ["epochs=36", "temperature=2.0"]); a list
    or dict setting, JSON in the label ("widths=[32, 64]"), stays one."""
    variant, _, settings = label.partition(" (")
    parts, depth, start = [], 0, 0
    settings = settings.removesuffix(")")
    for i, char in enumerate(settings):
        depth += (char in "[{") - (char in "]}")
        if depth == 0 and settings.startswith(", ", i):
            parts.append(settings[start:i])
            start = i + 2
    return variant, [s for s in parts + [settings[start:]] if s]


def unfinished(epoch, epochs):
    """"unfinished: epoch 3 of 40" for a run stopped before its last epoch, else None: a
    setting of its own in its label, so that it is never pooled with its recipe's finished
    seeds (their mean ± std, tests, training lengths, curves)."""
    if epoch is not None and epoch < (epochs or 0):
        return f"unfinished: epoch {epoch} of {epochs}"
    return None


def join_label(variant, settings):
    """label_settings' inverse: ("kd EMA", ["epochs=36"]) -> "kd EMA (epochs=36)"."""
    return f"{variant} ({', '.join(settings)})" if settings else variant


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
        labels.append(join_label(variant, [f"{key}={mine.get(key)}" for key in keys]))
    return labels


# a run resumed on another machine: its config names every machine it trained on, in order
MACHINES_SEPARATOR = ", then "


def is_mean_teacher_run(config):
    return "mode" in config  # a train_ema.py run


def is_student_run(config):
    return "loss" in config  # a train_student.py run


def is_teacher_run(config):
    """A train_teacher.py run (a folder may hold other configs, with no model named)."""
    return (not is_student_run(config) and not is_mean_teacher_run(config)
            and (config.get("model") or {}).get("name") == "teacher")


def run_variant(config, ema=False):
    """The variant a run's config describes: `teacher`, the student's method (`kd+ce`,
    `kd+ce+ls`, `ce`, ...; methods.variant), or the mean-teacher setting (`mean-teacher`,
    `mean-teacher-no-ema`: the teacher frozen, `mean-teacher-no-averaging`: decay 0). With
    `ema`, the run's second model: `<variant> EMA`, the EMA of its weights, or for a
    mean-teacher run `<variant> teacher`, its teacher."""
    if is_mean_teacher_run(config):
        variant = config["mode"] + ("-no-ema" if config["no_ema"] else
                                    "-no-averaging" if config.get("ema_decay") == 0 else "")
        return variant + " teacher" * ema
    if is_student_run(config):
        variant = methods.variant(config)
    else:  # the teacher, or a bare checkpoint known by its model alone
        variant = config["model"]["name"]
    return variant + " EMA" * ema


def seed_table(runs, keys, column="test_acc"):
    """Mean ± std (sample std, ddof=1) of `column` over the seeds of the runs sharing `keys`;
    runs without a value there are left out. A seed run twice (a rerun, another machine) is
    one seed, its runs averaged, as report.compare_runs pairs it; a run without a seed is
    one of its own."""
    tested = runs.dropna(subset=[column])
    if "seed" in tested:  # each seed's runs as their mean, in the rows' order (callers
        seeded = tested["seed"].notna()  # add columns by position)
        by_seed = [*keys, "seed"]
        means = tested[seeded].groupby(by_seed, dropna=False, sort=False)[column]
        tested = tested.assign(**{column: means.transform("mean").reindex(tested.index)
                                  .where(seeded, tested[column])})
        tested = tested[~(seeded & tested.duplicated(by_seed))]
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
            unused = methods.unused_flags(config.get("loss"))
            row = {
                "run": Path(stem).name, "model": config["model"]["name"], "variant": variant,
                "widths": " ".join(map(str, config["model"]["arch_args"]["widths"])),
                "images": config["train_subset"] or TRAIN_SIZE, "epochs": int(last["epoch"]),
                "planned_epochs": config.get("epochs"),  # what the run was started for
                "batch": config["batch_size"], "lr": config["lr"], "wd": config["weight_decay"],
                # T and alpha only where the run's loss uses them (--kd-weight and
                # --ce-weight replace alpha's mix: methods.KDCE)
                "T": None if "temperature" in unused else config.get("temperature"),
                "alpha": None if "alpha" in unused or config.get("kd_weight") is not None
                else config.get("alpha"),
                "seed": config["seed"],
                "val_acc": round(last["val_acc"], 2), "val_loss": round(last["val_loss"], 4),
                "test_acc": test.get("test_acc"),
                "minutes": round(training_minutes(history["epoch_seconds"]), 1),
                "img/s": round(history["images_per_second"].median()),
                "peak_gb": (round(history["peak_memory_mb"].max() / 1024, 2)
                            if "peak_memory_mb" in history else None)}
            rows.append(row)
            configs.append(config)
            if "ema_val_acc" in history:  # the EMA model of the same run, as a row of its own
                rows.append({**row, "run": row["run"] + " (EMA)",
                             "variant": run_variant(config, ema=True),
                             "val_acc": round(last["ema_val_acc"], 2),
                             "val_loss": round(last["ema_val_loss"], 4),
                             "test_acc": test.get("ema_test_acc")})
                configs.append(config)
    if not rows:  # no run has finished an epoch yet
        return pd.DataFrame()
    runs = pd.DataFrame(rows)
    # Runs that differ in anything but the seed are separate variants, named by what differs.
    runs["variant"] = recipe_labels(list(zip(runs["variant"], configs)))
    return runs


def markdown(table, formats=None):
    """`table` as a Markdown table of its cells as formatted: tabulate's number parsing
    would print "+1.50" as "1.5" and -0.00 as "-0". Float cells take their column's format
    spec in `formats` ({column: ".2f"}), else print as Python prints them, to 10 decimals (5.7,
    not 5.699999999999999); NaN is blank."""
    formats = formats or {}

    def cell(value, spec):
        if value != value:
            return ""
        return format(value, spec) if spec else str(round(value, 10))

    def shown(column):
        spec = formats.get(column.name)
        return column.map(lambda v: cell(v, spec) if isinstance(v, float) else v)
    return table.apply(shown).to_markdown(index=False, disable_numparse=True)
