"""Tables of results shared by evaluate.py and experiments/summarize.py: which variant a run
is, and the mean ± std of its test accuracy over seeds."""


# The order tables list variants in: the teacher, the students, then the EMA runs.
VARIANT_ORDER = ("teacher", "kd+ce", "kd", "ce", "mean-teacher", "mean-teacher EMA",
                 "mean-teacher-no-ema", "mean-teacher-no-ema EMA", "model-ema", "model-ema EMA")


def variant_rank(variant):
    return VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)


def run_variant(config, ema=False):
    """The variant a run's config describes: `teacher`, the student loss (`kd+ce`, `kd`, `ce`),
    or the EMA mode (`mean-teacher`, `mean-teacher-no-ema`, `model-ema`); with `ema`, the
    EMA model of that run (`... EMA`)."""
    if "mode" in config:  # a train_ema.py run
        variant = config["mode"] + ("-no-ema" if config["no_ema"] else "")
    elif "loss" in config:
        variant = config["loss"]
    else:  # the teacher, or a bare checkpoint known by its model alone
        variant = config["model"]["name"]
    return variant + " EMA" * ema


def seed_table(runs, keys):
    """Mean ± std (sample std, ddof=1) of `test_acc` over the runs (seeds) sharing `keys`;
    runs without a test accuracy are left out."""
    tested = runs.dropna(subset=["test_acc"])
    table = tested.groupby(keys, dropna=False, sort=False)["test_acc"]
    table = table.agg(["mean", "std", "count"]).reset_index()
    table["test_acc"] = [f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"
                         for m, s, n in zip(table["mean"], table["std"], table["count"])]
    return table.rename(columns={"count": "seeds"})[keys + ["seeds", "test_acc"]]
