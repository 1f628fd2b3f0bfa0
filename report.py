"""Write the pipeline's report, laid out like the original report, from evaluate.py's
results: the sample grid, the teacher, the students, the EMA comparison, and each
comparison's difference with its 95% confidence interval and a verdict: a difference, an
equivalence or unresolved, with Holm's correction over each table of comparisons.

    python report.py                  # plots/results.csv -> plots/report.md
    python report.py --plots-dir runs/quick/plots

Nothing in it is written by hand per run: every number and verdict comes from results.csv
(and predictions.csv beside it, for comparisons of one run a side).
"""
import kd.startup  # noqa: F401  (first: a Ctrl-C during the imports below is one line)

# isort: split
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import integrate, stats
from statsmodels.stats.contingency_tables import mcnemar as mcnemar_test
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

import methods
from kd import cli, plotting
from kd.records import prediction_column, write_text
from kd.results import (
    MEAN_TEACHER_VARIANTS,
    PROVENANCE,
    is_second_model,
    join_label,
    label_settings,
    markdown,
    seed_table,
)
from kd.runs import make_folder

# The original report (one run each), shown beside this run's figures.
ORIGINAL = {"teacher": "54.06%", "kd+ce": "48.85%", "kd": "50.58%",
            "mean-teacher": "47.24%", "mean-teacher-no-ema": "45.76%"}
# The students' comparisons come from the registered methods (methods.comparisons); the
# mean-teacher runs are compared with each other and with the student trained alone.
EMA_PAIRS = [("mean-teacher", other) for other in MEAN_TEACHER_VARIANTS
             if other != "mean-teacher"] + [("mean-teacher", "ce")]
LEVEL = 0.05  # family-wise error rate of each table of comparisons (Holm), and 1 - CI level
# Equivalence margin (points): two recipes are called equivalent only when a paired TOST
# puts their difference inside ±MARGIN. Set in issue 27 before these verdicts were
# recomputed, not fitted to them: about 1.5x the test set's own binomial standard error at
# 80-88% (0.3-0.4 points on 10,000 images), below which no choice of recipe would turn.
MARGIN = 0.5
TEST_IMAGES = 10_000  # CIFAR-10's test set, when no predictions.csv says how many
RESULTS_COLUMNS = ("checkpoint", "model", "variant", "seed", "test_acc", "macs",
                   "train_minutes")


def compare(a, b, paired=False):
    """a - b in points: the mean difference, its 95% t-interval (unadjusted) and two-sided
    p-value, on the per-seed differences when `paired` (a[i] and b[i] share a seed), by
    Welch's t-test otherwise; interval and p are NaN with fewer than 2 runs a side."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if paired and len(a) != len(b):
        raise ValueError(f"paired runs need as many of each, got {len(a)} and {len(b)}")
    diff = float(np.mean(a - b) if paired else a.mean() - b.mean())
    if min(len(a), len(b)) < 2:
        # one run a side: compare_runs may still compare them image by image (McNemar)
        fewer = {} if len(a) == len(b) == 1 else \
            {"no_test": f"{len(a)} and {len(b)} runs, fewer than 2 on one side"}
        return {"diff": diff, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan, **fewer}
    if not varies(a, b, paired):
        same = paired and np.array_equal(a, b)
        return {"diff": diff, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan,
                "no_test": "identical in every pair" if same else
                "the runs' differences do not vary" if paired else "neither side's runs vary"}
    with warnings.catch_warnings():
        # scipy warns of "precision loss" on a side whose runs all agree (e.g. two seeds at
        # 75.00%): its variance is 0 exactly, and Welch's test of the other side's spread holds.
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        test = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
    ci = test.confidence_interval(1 - LEVEL)
    return {"diff": diff, "ci_low": float(ci.low), "ci_high": float(ci.high),
            "p": float(test.pvalue)}


def holm(pvalues):
    """Holm-adjusted p-values of one family of tests; NaN (no test) stays NaN and does not
    count towards the family's size."""
    pvalues = np.asarray(pvalues, dtype=float)
    adjusted = np.full_like(pvalues, math.nan)
    tested = ~np.isnan(pvalues)
    if tested.any():
        adjusted[tested] = multipletests(pvalues[tested], method="holm")[1]
    return adjusted.tolist()


def varies(a, b, paired):
    """Whether the runs spread at all (the per-pair differences when `paired`, else either
    side): without spread t is infinite and scipy's p is 0 (two seeds whose differences agree
    to the printed digits do that), which is no evidence, so no test is made."""
    return (np.ptp(a - b) if paired else max(np.ptp(a), np.ptp(b))) >= 1e-9


def equivalence(a, b, margin=MARGIN):
    """p-value of the paired two one-sided tests (TOST) that a - b lies within ±margin
    points (a[i] and b[i] paired); small p: equivalent within the margin; NaN (no test) when
    the differences do not vary."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not varies(a, b, paired=True):
        return math.nan
    return float(ttost_paired(a, b, -margin, margin)[0])


def difference_power(seeds, sd, difference, family=1):
    """Probability that `seeds` paired runs resolve a true mean difference of `difference`
    points (a two-sided paired t-test rejecting 0), the per-seed differences spread with
    standard deviation `sd`, in a Holm family of `family` tests: at level LEVEL / family,
    which a test passing always passes Holm's, so a lower bound for the family. By hand:
    statsmodels' TTestPower is NaN for a large effect and few seeds (scipy's noncentral t
    cdf far in its lower tail); each tail here is a survival function, which holds."""
    df, shift = seeds - 1, difference / sd * math.sqrt(seeds)
    t = stats.t.ppf(1 - LEVEL / family / 2, df)
    return float(stats.nct.sf(t, df, shift) + stats.nct.sf(t, df, -shift))


def equivalence_power(seeds, sd, difference=0.0, margin=MARGIN, family=1):
    """Probability that `seeds` paired runs call two recipes equivalent within ±margin (the
    paired TOST of `equivalence`, at LEVEL / family as in difference_power) when their true
    mean difference is `difference`. By hand: statsmodels has no TOST power. Exact, not
    simulated: given the sample standard deviation s, TOST passes when the mean difference
    lies within ±(margin - t * s / sqrt(seeds)), a normal probability; that is integrated
    over s, whose (seeds - 1) s² / sd² is chi-square."""
    df, se = seeds - 1, sd / math.sqrt(seeds)
    t = stats.t.ppf(1 - LEVEL / family, df)

    def given(chi2):
        half = margin - t * math.sqrt(chi2 / df) * se
        inside = (stats.norm.cdf((half - difference) / se)
                  - stats.norm.cdf((-half - difference) / se))
        return inside * stats.chi2.pdf(chi2, df)

    # up to the s at which the window closes (half = 0): beyond it TOST never passes
    closed = df * (margin / (t * se)) ** 2
    return float(integrate.quad(given, 0, closed, limit=200)[0])


def mcnemar(correct_a, correct_b):
    """p-value of McNemar's exact test of two models evaluated on the same images (per-image
    booleans): the binomial test on the images exactly one of them gets right."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    return float(mcnemar_test(table, exact=True).pvalue)


def paired_accuracy_ci(correct_a, correct_b):
    """95% Wald interval (points) of the accuracy difference of two models on the same
    images. By hand: statsmodels has intervals for independent proportions only; this is
    the textbook one for paired proportions (Agresti, Categorical Data Analysis, 10.1)."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    n, only_a, only_b = len(a), np.mean(a & ~b), np.mean(~a & b)
    diff = only_a - only_b
    half = stats.norm.ppf(1 - LEVEL / 2) * math.sqrt((only_a + only_b - diff ** 2) / n)
    return 100 * (diff - half), 100 * (diff + half)


def binomial_se(accuracy, images):
    """Standard error (points) of a test accuracy (%) measured on `images` images."""
    p = accuracy / 100
    return 100 * math.sqrt(p * (1 - p) / images)


def format_p(p):
    """A p-value in two significant digits, or as many more as keep it on its side of LEVEL:
    an adjusted p of 0.0496 shown as "0.05" would contradict its verdict."""
    for digits in range(2, 17):
        shown = f"{p:.{digits}g}"
        if (float(shown) < LEVEL) == (p < LEVEL):
            return shown
    return repr(p)


def verdict(a, b, result):
    """The verdict in words from a test's Holm-adjusted p-values."""
    if result["p_adjusted"] < LEVEL:
        side = "above" if result["diff"] > 0 else "below"
        if result.get("one_model_each"):  # McNemar's: another seed could reverse it
            return (f"this {a} model {side} this {b} model on these test images (McNemar, "
                    f"adjusted p = {format_p(result['p_adjusted'])}); one seed each: the "
                    f"recipes are not compared")
        return f"{a} {side} {b} (adjusted p = {format_p(result['p_adjusted'])})"
    if result.get("tost_adjusted", math.nan) < LEVEL:
        return (f"equivalent within ±{MARGIN:g} points (TOST, adjusted p = "
                f"{format_p(result['tost_adjusted'])})")
    if "no_test" in result:
        return f"no test: {result['no_test']}"
    if math.isnan(result["ci_low"]):
        return "one run a side and no per-image predictions: no test"
    return f"unresolved: 95% CI [{result['ci_low']:+.2f}, {result['ci_high']:+.2f}]"


def compare_runs(a, b, key, predictions=None):
    """Compare the runs `a` and `b` (results rows): paired on `key` (the columns that make two
    runs share initialisation and batches) where at least two keys match, else Welch's over
    all of them (its label says which); one run a side: McNemar's test on `predictions`.
    Runs of one key on one side (a seed run on two machines) are not independent replicates:
    they are averaged into one value, for the pairs and for Welch's test alike. The result
    says which test it is ("test": "paired", "welch", "mcnemar" or None), whether it compared
    two runs or more a side unpaired ("unpaired", tested or not) and which keys both sides
    hold ("in_common": a frame of the `key` columns)."""
    a, b = a.dropna(subset=["test_acc"]), b.dropna(subset=["test_acc"])
    keyed = [runs.dropna(subset=key) for runs in (a, b)]
    twice = any(runs.duplicated(key).any() for runs in keyed)
    per_key = [runs.groupby(key, as_index=False)["test_acc"].mean() for runs in keyed]
    both = per_key[0].merge(per_key[1], on=key)
    by = " and ".join(key)
    averaged = f"runs of one {by} averaged" if twice else ""
    if len(both) >= 2:
        x, y = both["test_acc_x"], both["test_acc_y"]
        result = compare(x, y, paired=True)
        result["tost"] = equivalence(x, y)
        result["test"], result["in_common"], result["unpaired"] = "paired", both[key], False
        notes = [f"of {len(a)} and {len(b)} runs"] if len(both) < max(len(a), len(b)) else []
        notes += [averaged] if averaged else []
        result["runs"] = f"{len(both)} pairs by {by}" + (
            f" ({'; '.join(notes)})" if notes else "")
        return result
    # one value per key, and every run without one
    values = [pd.concat([means["test_acc"], runs.loc[runs[key].isna().any(axis=1), "test_acc"]])
              for means, runs in zip(per_key, (a, b))]
    result = compare(*values)
    fewest = min(map(len, values))
    welch = fewest >= 2 and "no_test" not in result  # none where neither side varies
    result["test"], result["in_common"] = ("welch" if welch else None), both[key]
    result["unpaired"] = fewest >= 2
    if averaged and fewest < 2:  # no McNemar either: runs were averaged
        result["no_test"] = (f"{len(values[0])} and {len(values[1])} seeds ({averaged}), "
                             f"fewer than 2 on one side")
    labels = (["Welch"] if welch else []) + ([averaged] if averaged and fewest >= 2 else [])
    result["runs"] = f"{len(a)} and {len(b)}, unpaired" + (
        f" ({'; '.join(labels)})" if labels else "")
    columns = [prediction_column(run["checkpoint"], run.get("weights", "raw"))
               for run in (a.iloc[0], b.iloc[0])] \
        if predictions is not None and len(a) == len(b) == 1 else []
    if columns and set(columns) <= set(predictions):
        correct = [predictions[column] for column in columns]
        result["p"] = mcnemar(*correct)
        result["ci_low"], result["ci_high"] = paired_accuracy_ci(*correct)
        result["runs"] = f"1 and 1: McNemar on {len(predictions):,} images"
        result["test"] = "mcnemar"
        result["one_model_each"] = True
    return result


def family_table(tests, names):
    """One family of comparisons, `tests` [(a, b, compare_runs's result)]: Holm-adjusted p-values
    (differences and equivalences adjusted separately) and a verdict per comparison."""
    adjusted = holm([result["p"] for _, _, result in tests])
    tost = holm([result.get("tost", math.nan) for _, _, result in tests])
    rows = []
    for (a, b, result), p, t in zip(tests, adjusted, tost):
        result = {**result, "p_adjusted": p, "tost_adjusted": t}
        ci = "" if math.isnan(result["ci_low"]) else \
            f"[{result['ci_low']:+.2f}, {result['ci_high']:+.2f}]"
        tost_p = result.get("tost", math.nan)
        rows.append({names[0]: f"{a} − {b}", "runs": result["runs"],
                     names[1]: "" if math.isnan(result["diff"]) else f"{result['diff']:+.2f}",
                     "95% CI": ci,
                     "p": "" if math.isnan(result["p"]) else format_p(result["p"]),
                     "adjusted p (Holm)": "" if math.isnan(p) else format_p(p),
                     f"TOST p (±{MARGIN:g})": "" if math.isnan(tost_p) else format_p(tost_p),
                     "TOST adjusted p (Holm)": "" if math.isnan(t) else format_p(t),
                     "verdict": verdict(a, b, result)})
    return pd.DataFrame(rows)


def per_variant(results):
    """Mean ± std of the test accuracy over seeds per variant, with its cost."""
    table = seed_table(results, ["variant"]).rename(columns={"test_acc": "test accuracy (%)"})
    runs = results.groupby("variant", sort=False)
    table["MACs"] = [f"{macs / 1e6:.1f}M" for macs in runs["macs"].first()]
    # the median: one run that shared the cores with other work would move a mean
    table["minutes per run (median)"] = runs["train_minutes"].median().round(1).to_numpy()
    table["original report"] = [ORIGINAL.get(variant, "") for variant in table["variant"]]
    return table


def second_models(results):
    """Which rows are a run's second model (kd.results.is_second_model), as booleans even
    when `results` is empty: an empty Series' map is object-typed, and a frame indexed by
    it selects columns, not rows (a report of teachers alone failed)."""
    return results["variant"].map(is_second_model).astype(bool)


def without_epochs(label):
    """A variant label with its `epochs=N` setting left out: the method whose training
    length varies ("kd (epochs=36, seed_x=1)" -> "kd (seed_x=1)")."""
    name, settings = label_settings(label)
    return join_label(name, [s for s in settings if not s.startswith("epochs=")])


def length_runs(students):
    """The students' raw runs (an EMA is its run's second model) of every method trained at
    two lengths or more, its other settings alike, with that method in a `method` column;
    none from a results.csv without an `epochs` column."""
    if "epochs" not in students:
        return students.iloc[:0]
    raw = students[~second_models(students)]
    raw = raw.assign(method=raw["variant"].map(without_epochs))
    return raw[raw.groupby("method")["epochs"].transform("nunique") > 1]


def length_table(runs, minutes=True):
    """Training length as a factor: per method and length (`runs`: one row per run with
    `method` and `epochs`, as from length_runs), the clean training accuracy (eval mode, no
    augmentation, the images the run trained on), validation and test accuracy, mean ± std
    over seeds, and the median minutes per run unless `minutes` is False. The gap between
    training and validation accuracy says whether a model fits what it trained on: the
    question a longer schedule or more capacity answers."""
    keys = ["method", "epochs"]
    table = seed_table(runs, keys)
    for column in ("val_acc", "train_acc"):
        if column in runs and runs[column].notna().any():
            table = table.merge(seed_table(runs, keys, column).drop(columns="seeds"),
                                how="left", on=keys)
    shown = ["training accuracy, clean (%)", "validation (%)", "test (%)"]
    if minutes:
        median = runs.groupby(keys)["train_minutes"].median().round(1).rename("minutes per run")
        table = table.merge(median.reset_index(), on=keys)
        shown.append("minutes per run")
    order = {m: i for i, m in enumerate(dict.fromkeys(runs["method"]))}
    table = table.sort_values(keys, key=lambda c: c.map(order) if c.name == "method" else c)
    table = table.rename(columns={"train_acc": "training accuracy, clean (%)",
                                  "val_acc": "validation (%)", "test_acc": "test (%)"})
    return table[[*keys, "seeds", *[c for c in shown if c in table]]].reset_index(drop=True)


def comparison_table(results, pairs, key, predictions=None):
    """The comparisons `pairs` of variants in `results`, one family (see family_table); runs
    pair on the columns `key`."""
    by_variant = {v: runs for v, runs in results.groupby("variant", sort=False)}
    tests = [(a, b, compare_runs(by_variant[a], by_variant[b], key, predictions))
             for a, b in pairs if a in by_variant and b in by_variant]
    return family_table(tests, ["comparison", "difference (points)"])


def comparisons(caption, results, pairs, key, predictions=None):
    """A section's entries for the comparisons `pairs`: (caption, table) (see
    comparison_table), then a line naming each pair that has runs of its first variant
    (under its label or another) and no runs under one or both of its labels, with the
    labels those variants' runs do have: a label names the settings in which a variant's
    runs differ ("ce (epochs=36)"), so a variant trained apart from the others would
    otherwise drop its comparisons unseen. A first variant with no runs under any label (a
    method not run) is not named."""
    present = list(dict.fromkeys(results["variant"]))
    bases = {label_settings(v)[0] for v in present}
    absent, unmade = {}, []
    for a, b in pairs:
        missing = [v for v in (a, b) if v not in present]
        if missing and a in bases:
            absent.update(dict.fromkeys(missing))
            unmade.append(f"{a} − {b}")
    entries = [(caption, comparison_table(results, pairs, key, predictions))]
    if unmade:  # one line, each absent label named once
        named = []
        for name in absent:
            labelled = [f"`{v}`" for v in present if label_settings(v)[0] == name]
            named.append(f"`{name}`" + (f" (its runs here: {', '.join(labelled)})"
                                        if labelled else ""))
        entries.append((f"Not compared, as no run is labelled {' or '.join(named)}: "
                        f"{'; '.join(unmade)}.", None))
    return entries


def raw_vs_ema_pairs(results):
    """(label of the EMA, label of the raw weights) of the same runs (checkpoints), for every
    run with an EMA of its weights (a mean-teacher run's second model is its teacher, `v
    teacher`, compared in its own section). Matched by checkpoint, not by label: the two
    labels' settings are told apart among different rows (a raw `kd (ema_decay=0.999)`
    has the EMA `kd EMA` where no other run of `kd EMA` differs)."""
    is_ema = results["variant"].map(lambda v: label_settings(v)[0].endswith(" EMA"))
    raw = results[~second_models(results)]
    both = raw.merge(results[is_ema.astype(bool)], on="checkpoint", suffixes=("_raw", "_ema"))
    return list(dict.fromkeys(zip(both["variant_ema"], both["variant_raw"])))


def provenance(results):
    """Where the runs came from, as their records say (evaluate.py): data, training
    images, machine, precision, torch and code; a field on which runs differ lists every
    value, so a report over mixed runs says so."""
    lines = []
    for column, label in PROVENANCE.items():
        values = results[column].fillna("").astype(str).unique() if column in results \
            else [""]
        values = [f"`{v}`" if v else "not recorded" for v in values]
        mixed = " (**the runs differ**)" if len(values) > 1 else ""
        lines.append(f"- {label}: {', '.join(values)}{mixed}")
    return "\n".join(lines) + "\n"


def section(title, figure, plots_dir, tables, figure_caption=None):
    """A titled section with its figure (and what it shows) and tables; empty when it has
    neither."""
    parts = []
    if figure and (Path(plots_dir) / figure).exists():
        parts.append(f"![{title}]({figure})\n")
        parts += [f"{figure_caption}\n"] if figure_caption else []
    for caption, table in tables:
        if table is None:  # a line of its own
            parts.append(f"{caption}\n")
        elif not table.empty:
            parts.append(f"{caption}\n\n{markdown(table)}\n")
    return "\n".join([f"## {title}\n", *parts]) if parts else ""


def teachers(students):
    """One line: whether each distilling variant's runs learn from one teacher (its ± is over
    student seeds only) or each from its own seed's teacher (over teacher and student seeds),
    from results.csv's teacher columns."""
    if "teacher_sha256" not in students:
        return ("Teachers: not recorded in this results.csv (evaluate.py before issue 26), so "
                "not known.")
    kinds = {}
    distilled = students[students["teacher_sha256"].notna()
                         & ~second_models(students)]
    for variant, runs in distilled.groupby("variant", sort=False):
        seeds = runs["teacher_seed"]
        if runs["teacher_sha256"].nunique() == 1:
            kind = "one teacher" + (f" (seed {int(seeds.iloc[0])})" if seeds.notna().all()
                                    else "") + ", ± over student seeds only"
        elif (seeds == runs["seed"]).all():
            kind = "each run its own seed's teacher, ± over teacher and student seeds"
        else:
            kind = (f"{runs['teacher_sha256'].nunique()} teachers, not paired by seed, ± over "
                    "both")
        kinds.setdefault(kind, []).append(variant)
    if not kinds:  # no distilled students
        return ""
    return "Teachers: " + "; ".join(f"{', '.join(variants)}: {kind}"
                                    for kind, variants in kinds.items()) + "."


def rules(results, predictions):
    """What the report's intervals and verdicts mean, with the numbers they rest on."""
    images = len(predictions) if predictions is not None else TEST_IMAGES
    errors = [binomial_se(acc, images) for acc in results["test_acc"].dropna()]
    one_run = ("With one run a side a comparison uses McNemar's exact test on the per-image "
               "predictions (predictions.csv), its interval the Wald interval of paired "
               "proportions: it says whether the two models differ on "
               "these test images, not whether their recipes differ over seeds."
               if predictions is not None else
               "With one run a side and no predictions.csv no test is made.")
    return (
        "Test accuracy on the CIFAR-10 test set, mean ± std over the seeds present. The test "
        f"set's own sampling error: a model's accuracy on {images:,} images has a binomial "
        f"standard error of {min(errors):.2f}-{max(errors):.2f} points for the models here "
        "(sqrt(p(1 - p)/n)), within which one model against another cannot be told apart "
        "by accuracy alone.\n\n"
        "Each comparison gives the difference in points with its 95% t-interval "
        "(unadjusted), paired on the per-seed differences where both variants have runs of "
        "two seeds or more in common (those share initialisation and batch order; the "
        "`runs` column says how many pairs; a seed's runs on one side, from two machines "
        "say, are averaged "
        "into one value), Welch's otherwise. Students pair by seed whatever teacher they "
        "distil from; the students' `Teachers:` line says whether a variant's ± is over "
        "student seeds only (one teacher) or over teacher and student seeds (each its own "
        "seed's teacher); a mean-teacher run's teacher is its own EMA: one seed covers both. "
        + one_run + " In each table of "
        f"comparisons the differences' p-values are one Holm-adjusted family, and the "
        f"equivalences' another; a verdict says "
        f"\"A above B\" only at adjusted p < {LEVEL}; \"equivalent within ±{MARGIN:g} "
        f"points\" only from a paired two one-sided test (TOST, margin fixed in report.py) "
        f"at adjusted p < {LEVEL} (unadjusted, that is the {100 - 200 * LEVEL:g}% interval "
        f"inside the margin, so the {100 - 100 * LEVEL:g}% interval shown may reach past "
        f"it); anything "
        "else is \"unresolved\", with its interval: not a finding of no difference.\n")


def length_section(students, plots_dir):
    """The training-length table and its figure (plots_dir/length.png), where some method
    was trained at several lengths."""
    runs = length_runs(students)
    if runs.empty:
        return ""
    plotting.plot_length(runs, Path(plots_dir) / "length.png")
    return section("Training length", "length.png", plots_dir,
                   [("Per method and length (± over seeds; minutes: median per run, on the "
                     "machines the provenance lists):", length_table(runs))])


def teacher_figures(results, plots_dir):
    """(figure, caption) of the report's teacher section: with several teacher seeds, their
    validation curves over seeds (teachers_compare.png, which each teacher run redraws);
    else, or where that figure is missing, seed 0's own curves, training included."""
    teachers = results[(results["model"] == "teacher") & ~second_models(results)]
    folders = {str(Path(checkpoint).parent) for checkpoint in teachers["checkpoint"]}
    # the figure is of the teacher runs in one folder: the last teacher run's to end
    if teachers["seed"].nunique() > 1 and len(folders) == 1 \
            and (Path(plots_dir) / "teachers_compare.png").exists():
        return ("teachers_compare.png", f"Validation loss and accuracy of the teacher runs in "
                f"`{folders.pop()}/` (each teacher run redraws it as it ends): the mean over "
                "seeds, per recipe, a band of ± 1 std; dashed: their EMA weights. Each run's "
                "own curves, training included, are in `<run>_curves.png`.")
    return "teacher_curves.png", "The curves are of one run: seed 0's teacher (`teacher.pt`)."


def write_report(results, plots_dir, predictions=None):
    seeds = sorted(results["seed"].dropna().astype(int).unique())
    students = results[results["model"] == "student"]
    # as booleans, as second_models gives them
    is_mean_teacher = students["variant"].str.startswith("mean-teacher").astype(bool)
    raw = results[~second_models(results)]
    key = ["seed"]
    teacher_figure, teacher_caption = teacher_figures(results, plots_dir)
    text = [
        "# Knowledge distillation on CIFAR-10: the report of this run\n",
        f"Seeds present: {', '.join(map(str, seeds))}. Written by report.py from results.csv "
        "(evaluate.py).\n",
        rules(results, predictions),
        f"{len(results)} models from {results['checkpoint'].nunique()} checkpoints:\n",
        provenance(results),
        section("The data", "samples.png", plots_dir, []),
        section("The teacher", teacher_figure, plots_dir,
                [("Test accuracy (± over teacher seeds):",
                  per_variant(results[results["model"] == "teacher"]))],
                figure_caption=teacher_caption),
        section("The students", "students_compare.png", plots_dir,
                [(f"Test accuracy (± over seeds). {teachers(students[~is_mean_teacher])}".strip(),
                  per_variant(students[~is_mean_teacher])),
                 *comparisons("Differences (one family, Holm):", raw,
                              methods.comparisons(), key, predictions)]),
        length_section(students[~is_mean_teacher], plots_dir),
        section("Mean-teacher: with and without EMA", "ema_compare.png", plots_dir,
                [("Test accuracy (the student; `teacher` rows: its teacher; ± over seeds, "
                  "each run's teacher its own):", per_variant(students[is_mean_teacher])),
                 *comparisons("Differences (one family, Holm):", raw, EMA_PAIRS, key,
                              predictions)]),
        section("Raw against EMA weights of the same runs", None, plots_dir,
                [("EMA − raw, paired by run (one family, Holm):",
                  comparison_table(results, raw_vs_ema_pairs(results), ["checkpoint"],
                                   predictions))]),
    ]
    path = Path(plots_dir) / "report.md"
    write_text(path, "\n".join(part for part in text if part))
    return path


def read_results(path, required=RESULTS_COLUMNS):
    """evaluate.py's results.csv at `path`, refused in one line (cli.UserError) when it is
    not one: unreadable, without rows, missing a column or with incomplete rows."""
    try:
        text = Path(path).read_text()
        results = pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise cli.UserError(f"{path} is not a results.csv of evaluate.py: "
                            f"{str(e).splitlines()[0]}") from None
    except OSError as e:
        raise cli.UserError(f"cannot read {path} ({e.strerror})") from None
    if not text.endswith("\n"):  # evaluate.py ends every line, the last one too
        raise cli.UserError(f"{path} ends in the middle of a line: truncated? Run "
                            "evaluate.py again")
    missing = [column for column in required if column not in results]
    if missing:
        raise cli.UserError(f"{path} is not a results.csv of evaluate.py: no column "
                            f"{', '.join(missing)}")
    if results.empty:
        raise cli.UserError(f"{path} has no rows: run evaluate.py again")
    values = [column for column in required if column != "seed"]  # a bare checkpoint: none
    incomplete = results[values].isna().any(axis=1)
    numeric = pd.to_numeric(results["test_acc"], errors="coerce").notna()
    if incomplete.any() or not numeric.all():
        row = int((incomplete | ~numeric).to_numpy().argmax()) + 2  # + the header, from 1
        raise cli.UserError(f"{path}: line {row} is incomplete or not a number where "
                            f"{', '.join(values)} should be (a truncated file?)")
    return results


def run_names(checkpoints):
    """Each checkpoint's stem, the run's name in every table it is in, or where two files of
    one table share a stem (runs/a/kd_seed0.pt and runs/b/kd_seed0.pt: two runs), its path
    without the suffix."""
    paths = checkpoints.map(os.path.normpath)
    stems = paths.map(lambda path: Path(path).stem)
    shared = paths.groupby(stems).transform("nunique") > 1
    return stems.where(~shared, paths.map(lambda path: str(Path(path).with_suffix(""))))


def one_row_per_run(results, where):
    """`results` with each run named in a `run` column (evaluate.py's results.csv names it by
    its checkpoint, run_names; a trimmed copy may name it `run`) and listed once: a run
    (name, weights, seed) listed twice is one run evaluated twice, kept once if its
    accuracies agree and refused in one line, naming `where`, if not."""
    if "run" not in results.columns and "checkpoint" in results.columns:
        results = results.assign(run=run_names(results["checkpoint"]))
    if "run" not in results.columns:
        raise cli.UserError(f"{where}: no column run or checkpoint to name its runs by")
    key = [column for column in ("run", "weights", "seed") if column in results.columns]
    measured = [column for column in ("epochs", "train_acc", "val_acc", "test_acc")
                if column in results.columns]
    results = results.drop_duplicates([*key, *measured])
    clashes = results[results.duplicated(key, keep=False)]
    if not clashes.empty:
        first = clashes.iloc[0]
        raise cli.UserError(f"run {first['run']} ({first.get('weights', 'raw')} weights) is "
                            f"listed twice in {where}, with different accuracies; give each "
                            "run once")
    return results


def read_predictions(path):
    """predictions.csv (evaluate.py: one column of per-image booleans per model), or None."""
    if not Path(path).is_file():
        return None
    try:
        predictions = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise cli.UserError(f"{path} is not a predictions.csv of evaluate.py: "
                            f"{str(e).splitlines()[0]}") from None
    if predictions.empty or not predictions.isin([0, 1]).all().all():
        raise cli.UserError(f"{path} is not a predictions.csv of evaluate.py: it should hold "
                            "a 0 or 1 per test image and model")
    return predictions.astype(bool)


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("--plots-dir", default="plots", help="where results.csv (from "
                        "evaluate.py) and the figures are, and report.md goes (default: plots)")
    args = parser.parse_args()
    csv = Path(args.plots_dir) / "results.csv"
    if not csv.exists():
        raise cli.UserError(f"no {csv}: run evaluate.py first (make all does)")
    make_folder(Path(args.plots_dir), "--plots-dir")  # writable, before the report is made
    predictions = read_predictions(Path(args.plots_dir) / "predictions.csv")
    print(f"wrote {write_report(read_results(csv), args.plots_dir, predictions)}")


if __name__ == "__main__":
    cli.run_cli(main, trains=False)
