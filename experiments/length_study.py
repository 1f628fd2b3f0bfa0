"""Training length as a factor (issue 26): from evaluate.py's results.csv (or trimmed copies
such as experiments/h200_runs.csv; several tables are read as one), each student method's
clean training, validation and test accuracy at every length (mean ± std over the seeds
run, with the machines and precisions they ran on), a figure of test accuracy (solid)
and clean training accuracy (dashed) against epochs, one colour per method, the paired
comparisons (methods against the student alone and KD alone, a method's settings against
each other, lengths against the shortest, a method's side settings in a family of their
own), each run's EMA against its raw weights (a family of its own), and the best
student's recipe: the choice on validation among the methods at the longest length.

    python experiments/length_study.py --figure docs/figures/length.png   # the study: five
                                            # seeds, two machines, and README's figure
    python experiments/length_study.py --beside experiments/xeon_runs.csv   # beside seeds 0-2
    python experiments/length_study.py experiments/xeon_runs.csv --figure /tmp/length.png \
        --beside experiments/h200_runs.csv experiments/zen1_runs.csv \
        experiments/xeon_part_runs.csv      # seeds 0-2 beside the three-machine version
    python experiments/length_study.py plots/results.csv --figure plots/length.png
"""
import fnmatch
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from select_settings import SHOWN, decisions  # noqa: E402

import report  # noqa: E402
from kd import cli, plotting  # noqa: E402
from kd.results import MACHINES_SEPARATOR, label_settings, markdown  # noqa: E402
from report import compare_runs, family_table, one_row_per_run, without_epochs  # noqa: E402

STUDENT_RUN = "student_"  # the length runs' names; the teachers and mean-teacher runs are left out
COLUMNS = ["train_acc", "val_acc", "test_acc"]
# the study (docs/results.md): seeds 0-2 from the Xeon, seeds 3 and 4 from the Zen 5
DEFAULT_TABLES = ["experiments/xeon_runs.csv", "experiments/zen5_runs.csv"]


def student_runs(results):
    """The student runs' raw-weight rows, each with its method: its variant without the
    training length ("kd+ce (epochs=36)" -> "kd+ce")."""
    runs = results[(results["weights"] == "raw") & results["run"].str.startswith(STUDENT_RUN)]
    return runs.assign(method=runs["variant"].map(without_epochs))


def length_table(results):
    """report.py's length table over every student method and length (raw weights), methods
    in alphabetical order, with where each row's runs trained in place of their minutes
    (the runs come from several machines)."""
    runs = student_runs(results).sort_values("method", kind="stable")
    if runs.empty:
        raise cli.UserError("no student runs (rows named student_*) with raw weights found")
    table = report.length_table(runs, minutes=False)
    if {"machine", "precision", "seed"} <= set(runs.columns):
        runs = runs.assign(machine=runs["machine"].map(short_machine_names(runs["machine"])))
        where = runs.groupby(["method", "epochs"])[["machine", "precision", "seed"]]
        table = table.merge(where.apply(ran_on).rename("ran on").reset_index(),
                            on=["method", "epochs"])
    return table


def short_machine_names(machines):
    """{machine as evaluate.py records it: a name to print}: the name without its details
    ("AMD EPYC (2 CPUs, bf16 units: AVX512_BF16)" -> "AMD EPYC"), so that a row's "ran on"
    stays short; a machine whose short name another machine shares keeps its whole name.
    main prints the whole names below the table."""
    machines = sorted(set(machines.dropna()))
    # a run resumed elsewhere names each machine: "A (...), then B (...)"
    short = {m: MACHINES_SEPARATOR.join(re.sub(r" \(.*\)$", "", part).replace("(R)", "")
                                        for part in m.split(MACHINES_SEPARATOR))
             for m in machines}
    taken = pd.Series(list(short.values())).value_counts()
    return {m: name if taken[name] == 1 else m for m, name in short.items()}


def ran_on(runs):
    """Where a row's runs trained: each machine and precision with its seeds."""
    where = runs["machine"].fillna("?") + " " + runs["precision"].fillna("?")
    return "; ".join(f"{place}: seed{'s' * (len(seeds) > 1)} "
                     f"{', '.join(str(s) for s in sorted(seeds))}"
                     for place, seeds in runs.groupby(where)["seed"])


def teachers_by_seed(runs):
    """Which teachers each seed's distilled runs (`student_runs` rows with a teacher seed or
    hash) learnt from, by sha256 prefix, with how many runs each: the comparisons pair a seed's
    runs as if they shared one, which runs from two machines' teachers of that seed do not
    (a table trimmed without evaluate.py's teacher_sha256 column leaves it unknown)."""
    recorded = [runs[column].notna() for column in ("teacher_seed", "teacher_sha256")
                if column in runs]
    distilled = runs[pd.concat(recorded, axis=1).any(axis=1)] if recorded else runs.iloc[:0]
    hashes = distilled.get("teacher_sha256", pd.Series(index=distilled.index, dtype=object))
    parts = []
    for seed, seed_hashes in hashes.groupby(distilled["seed"]):
        counts = seed_hashes.value_counts().sort_index()
        part = [f"{len(counts)} teacher{'s' * (len(counts) > 1)} ("
                + ", ".join(f"{sha}: {runs_count(n)}" for sha, n in counts.items()) + ")"]
        part = part[:len(counts) > 0]
        if unknown := int(seed_hashes.isna().sum()):
            part.append(f"{runs_count(unknown)} without a teacher recorded")
        parts.append(f"seed {seed}: {', '.join(part)}")
    return "; ".join(parts) or "none"


def runs_count(n):
    return f"{n} run{'s' * (n != 1)}"


def read_tables(paths):
    """evaluate.py tables read as one, each run once (report.one_row_per_run)."""
    frames = [one_row_per_run(report.read_results(
        path, ["weights", "variant", "epochs", "seed", *COLUMNS]), path) for path in paths]
    return one_row_per_run(pd.concat(frames, ignore_index=True), "the tables")


# At a length with several seeds: each method against the student alone, and against KD
# alone, and a method's settings against each other, paired by seed (one Holm family,
# report.py's rules).
BASELINES = ("ce", "kd")


def method_pairs(methods):
    """(method, baseline) for each of `methods` against each baseline among them."""
    return [(method, baseline) for baseline in BASELINES if baseline in methods
            for method in methods
            if method != baseline and not (baseline == "kd" and method == "ce")]


def setting_pairs(methods):
    """(setting, other setting) for each two settings of one method among `methods` (each
    pair once): whether its setting matters at that length."""
    return [(a, b) for i, a in enumerate(sorted(methods)) for b in sorted(methods)[i + 1:]
            if label_settings(a)[0] == label_settings(b)[0]]


def side_settings(runs):
    """Of a method run at several settings (evaluate.py's labels: "dkd (dkd_warmup=1.0)",
    "dkd (dkd_warmup=8.0)"), those run at fewer lengths than its most-run one: side questions
    about that method, which setting_comparisons tests in a family of their own, so that
    adding one does not re-weigh (Holm) the study's planned comparisons."""
    lengths = runs.groupby("method")["epochs"].nunique()
    most = lengths.groupby(lambda method: label_settings(method)[0]).transform("max")
    return set(lengths.index[lengths < most])


def planned_runs(results):
    """The student runs of the study's planned comparisons: side settings left out."""
    runs = student_runs(results)
    return runs[~runs["method"].isin(side_settings(runs))]


def comparisons(results, epochs):
    runs = planned_runs(results)
    runs = runs[runs["epochs"] == epochs]
    by_method = {method: rows for method, rows in runs.groupby("method") if len(rows) >= 2}
    pairs = method_pairs(list(by_method))
    # a second setting of a baseline ("kd (temperature=2.0)") is both a method against it
    # and a setting of it: tested once
    pairs += [(a, b) for a, b in setting_pairs(by_method) if (b, a) not in pairs]
    tests = [(method, other, compare_runs(by_method[method], by_method[other], ["seed"]))
             for method, other in pairs]
    if not tests:
        return None
    return family_table(tests, ("comparison", "difference (points)"))


def against_shortest(name, runs):
    """(`name` and a longer length, the shortest length, compare_runs's result) for each
    longer length of `runs` (rows with epochs, seed and test_acc), paired by seed, over the
    lengths with at least two seeds; none where fewer than two lengths have them."""
    by_length = {epochs: group for epochs, group in runs.groupby("epochs") if len(group) >= 2}
    if len(by_length) < 2:
        return []
    shortest = min(by_length)
    return [(f"{name}{epochs} epochs", f"{shortest} epochs",
             compare_runs(group, by_length[shortest], ["seed"]))
            for epochs, group in sorted(by_length.items()) if epochs != shortest]


def gap_changes(results):
    """Whether a method's difference to a baseline (method_pairs) changes with length: per
    seed, the difference at each longer length against the one at the shortest, paired by
    seed where both lengths have it on at least two seeds (one Holm family); None where
    no pair has. A gap that looks smaller at 96 epochs than at 12 is a finding only here."""
    runs = planned_runs(results)
    tests = lead_changes(runs, method_pairs(sorted(runs["method"].unique())))
    return family_table(tests, ("comparison", "difference (points)")) if tests else None


def lead_changes(runs, pairs):
    """gap_changes' tests of (method, baseline) `pairs` among `runs`."""
    accuracy = runs.set_index(["method", "epochs", "seed"])["test_acc"]
    tests = []
    for method, baseline in pairs:
        gaps = (accuracy[method] - accuracy[baseline]).dropna().reset_index()
        tests += against_shortest(f"{method} − {baseline}: ", gaps)
    return tests


def length_comparisons(results):
    """Each method at every longer length against its shortest, paired by seed, where both
    lengths have at least two seeds (one Holm family); None where none has."""
    tests = [test for method, rows in planned_runs(results).groupby("method")
             for test in against_shortest(f"{method} ", rows)]
    return family_table(tests, ("comparison", "difference (points)")) if tests else None


def setting_comparisons(results):
    """Each side setting (side_settings) at its lengths against its method's other settings
    and against the baselines (BASELINES), at its longer lengths against its shortest, and
    its lead over each baseline there against its lead at its shortest, paired by seed
    where both have at least two seeds: one Holm family; None where no method has a side
    setting."""
    runs = student_runs(results)
    side = side_settings(runs)
    tests = []
    for epochs, at_length in runs.groupby("epochs"):
        by_method = {method: rows for method, rows in at_length.groupby("method")
                     if len(rows) >= 2}
        for setting in sorted(side & set(by_method)):
            name = label_settings(setting)[0]
            others = [other for other in sorted(by_method) if other != setting and
                      (label_settings(other)[0] == name or other in BASELINES)
                      and not (other in side and other < setting)]  # each pair once
            tests += [(setting, f"{other} at {epochs} epochs",
                       compare_runs(by_method[setting], by_method[other], ["seed"]))
                      for other in others]
    for setting, rows in runs[runs["method"].isin(side)].groupby("method"):
        tests += against_shortest(f"{setting} ", rows)
    methods = set(runs["method"])
    tests += lead_changes(runs, [(setting, baseline) for setting in sorted(side)
                                 for baseline in BASELINES if baseline in methods])
    return family_table(tests, ("comparison", "difference (points)")) if tests else None


def ema_comparisons(results):
    """The EMA of each student run's weights against its raw weights, per method and length,
    paired by run: one Holm family of its own, apart from the study's planned ones;
    None where no run has both."""
    raw = student_runs(results)
    ema = results[results["weights"] == "ema"][["run", "test_acc"]]
    both = raw.merge(ema, on="run", suffixes=("", "_ema"))
    tests = [(f"{method}, {epochs} epochs: EMA", "raw",
              compare_runs(rows.assign(test_acc=rows["test_acc_ema"]), rows, ["run"]))
             for (method, epochs), rows in both.groupby(["method", "epochs"])
             if len(rows) >= 2]
    return family_table(tests, ("comparison", "difference (points)")) if tests else None


def leave_out(results, patterns, strict=True):
    """`results` without the runs whose method (its label without the length) matches one of
    the shell-style `patterns`: the families as they were before a method joined them.
    `strict`: a pattern that matches nothing is refused (a typo would leave out nothing)."""
    methods = results["variant"].map(without_epochs)
    dropped = methods.map(lambda m: any(fnmatch.fnmatchcase(m, p) for p in patterns))
    if strict and patterns and not dropped.any():
        raise cli.UserError(f"no method matches {' '.join(patterns)}")
    return results[~dropped]


def default_settings():
    """{setting: its value as a label writes it} for every flag of train_student.py left at
    its default."""
    import train_student  # its parser holds the defaults; imported here, where they are needed
    args, _ = train_student.parse([])
    return {key: str(value) for key, value in vars(args).items()}


def one_label_per_recipe(frames):
    """(`frames` with one label for each recipe across them, {label: the label it was read
    as}). evaluate.py names only the settings in which the runs it read differ, so one
    recipe evaluated apart from another may carry a shorter label ("dkd (clip_grad_norm=0.0,
    dkd_beta=0.5)" beside the same with "dkd_warmup=1.0"): labels whose settings away from
    train_student.py's defaults agree are read as one recipe, under the longest of them
    (each run keeps its length). That takes a setting a label leaves out to be at today's
    default, which a table of runs that all shared another value (or ran before a default
    changed) would break: the caller prints every such reading."""
    defaults = default_settings()

    def recipe_key(method):
        name, settings = label_settings(method)
        away = [(key, value) for key, _, value in (s.partition("=") for s in settings)
                if key not in defaults or defaults[key] != value]
        return name, tuple(away)

    methods = sorted({without_epochs(v) for frame in frames for v in frame["variant"]})
    recipes = {}
    for method in methods:
        recipes.setdefault(recipe_key(method), []).append(method)
    read_as = {method: longest for same in recipes.values()
               for longest in [max(same, key=lambda m: len(label_settings(m)[1]))]
               for method in same if method != longest}

    def relabel(label):
        method = without_epochs(label)
        if method not in read_as:
            return label
        epochs = [s for s in label_settings(label)[1] if s.startswith("epochs=")]
        return with_epochs(read_as[method], epochs[0].partition("=")[2]) if epochs \
            else read_as[method]

    return [frame.assign(variant=frame["variant"].map(relabel)) for frame in frames], read_as


def best_recipe(results):
    """The best student's recipe (issue 26): select_settings' one choice across methods, on
    the mean validation accuracy over seeds of the student runs at the longest length
    (raw weights), a second seed deciding recipes within a point. The runs' minutes are
    left out: they come from different machines."""
    runs = student_runs(results)
    runs = runs[runs["epochs"] == runs["epochs"].max()]
    # one label per method and length: evaluate.py names the length in a variant only where
    # the runs it read differ in it, so one recipe's seeds may come labelled two ways
    runs = runs.assign(variant=[with_epochs(method, epochs)
                                for method, epochs in zip(runs["method"], runs["epochs"])])
    table = decisions(runs.assign(minutes=float("nan")), across=True)
    return table.drop(columns=["method", "minutes"]).rename(columns={"setting": "recipe"})


def with_epochs(method, epochs):
    """without_epochs undone: "kd (temperature=2.0)", 96 -> "kd (epochs=96, temperature=2.0)"."""
    name, settings = label_settings(method)
    return f"{name} ({', '.join(sorted([f'epochs={epochs}', *settings]))})"


TITLES = {"longer against shorter": "Longer against shorter, paired by seed",
          "change of lead": "A method's lead over a baseline at a longer length against its "
                            "lead at the shortest, paired by seed",
          "side settings": "A method's side settings (run at fewer lengths than its main one) "
                           "against its other settings and the baselines, paired by seed, one "
                           "family of their own"}


def families(results):
    """[(name, table)]: the study's Holm families, each length's with at least two seeds of
    a method first, then the families across lengths (TITLES), those it can make."""
    runs = student_runs(results).dropna(subset=["test_acc"])
    seeds = runs.groupby(["method", "epochs"]).size()
    lengths = sorted(seeds[seeds >= 2].index.get_level_values("epochs").unique())
    found = [(f"at {epochs} epochs", comparisons(results, epochs)) for epochs in lengths]
    found += [("longer against shorter", length_comparisons(results)),
              ("change of lead", gap_changes(results)),
              ("side settings", setting_comparisons(results))]
    return [(name, table) for name, table in found if table is not None]


def verdict_kind(verdict):
    """"above", "below", "equivalent", "unresolved" or "no test": what a verdict says."""
    for kind in ("unresolved", "equivalent", "no test", "one run"):
        if verdict.startswith(kind):
            return "no test" if kind == "one run" else kind
    return "above" if " above " in verdict else "below"


def beside(mine, other):
    """Each comparison of the families `mine` beside the same comparison (same family and
    name) in `other`: its difference, interval and adjusted p there, and whether the
    verdict is the same: the study's robustness to which runs it rests on."""
    others = dict(other)
    rows = []
    for name, table in mine:
        there = others.get(name, pd.DataFrame(columns=table.columns)).set_index("comparison")
        for row in table.to_dict("records"):
            found = there.loc[row["comparison"]] if row["comparison"] in there.index else None
            kind = verdict_kind(row["verdict"])
            same = ("no comparison beside" if found is None else "yes"
                    if verdict_kind(found["verdict"]) == kind
                    else f"no: {verdict_kind(found['verdict'])} beside")
            rows.append({"family": name, "comparison": row["comparison"],
                         "difference (points)": row["difference (points)"],
                         "95% CI": row["95% CI"], "adjusted p": row["adjusted p (Holm)"],
                         "verdict": row["verdict"],
                         **({} if found is None else {
                             "beside: difference": found["difference (points)"],
                             "beside: 95% CI": found["95% CI"],
                             "beside: adjusted p": found["adjusted p (Holm)"]}),
                         "same verdict": same})
    return pd.DataFrame(rows).fillna("")


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("results", nargs="*", default=[ROOT / path for path in DEFAULT_TABLES],
                        help="evaluate.py's results.csv or copies with its columns, read as "
                             f"one (default: {' '.join(DEFAULT_TABLES)})")
    # Not docs/figures/length.png, README's: a run on other tables replaced it unseen.
    parser.add_argument("--figure", default="plots/length.png",
                        help="where the figure goes (default: plots/length.png; README's "
                             "is docs/figures/length.png, of the default tables)")
    parser.add_argument("--leave-out", nargs="+", default=[], metavar="PATTERN",
                        help="leave out the methods whose label (without the length) matches "
                             "a shell-style pattern, e.g. 'dkd (clip_grad_norm=0.0*': the "
                             "families as they were before that method joined them")
    parser.add_argument("--beside", nargs="+", default=[], metavar="TABLE",
                        help="also the study on these tables (read as one, the same methods "
                             "left out), each comparison's verdict set beside this one's; "
                             "comparisons are matched by label, each recipe under one label "
                             "in both")
    args = parser.parse_args()
    tables = [read_tables(args.results)] + ([read_tables(args.beside)] if args.beside else [])
    tables, read_as = one_label_per_recipe(tables)
    for label, recipe in read_as.items():
        print(f"read as one recipe (a setting a label leaves out taken at train_student.py's "
              f"default): {label}  ->  {recipe}")
    results = leave_out(tables[0], args.leave_out)
    table = length_table(results)
    names = short_machine_names(student_runs(results).get("machine", pd.Series(dtype=object)))
    machines = ", ".join(sorted(set(names.values()))) or "?"
    plotting.plot_length(student_runs(results), args.figure,
                         f"the student (3.1 M MACs) by training length, error bars: std over "
                         f"seeds\nran on {machines}")
    print(markdown(table))
    if names:
        print("\nThe machines in full: "
              + "; ".join(f"{name}: {machine}" for machine, name in names.items()) + ".")
    print("\nThe distilled runs' teachers (sha256 prefix), per seed: "
          f"{teachers_by_seed(student_runs(results))}.")
    found = families(results)
    for name, family in found:
        title = TITLES.get(name, f"{name[0].upper()}{name[1:]}, paired by seed")
        print(f"\n{title}:\n\n{markdown(family)}")
    ema = ema_comparisons(results)
    if ema is not None:
        print("\nThe EMA of the weights against the raw weights of the same runs, per method "
              f"and length, paired by run (a family of its own):\n\n{markdown(ema)}")
    if args.beside:
        other = families(leave_out(tables[1], args.leave_out, strict=False))
        print(f"\nEach comparison beside the same from {' '.join(map(str, args.beside))}:\n\n"
              f"{markdown(beside(found, other))}")
    recipes = best_recipe(results)
    print(f"\nThe best student's recipe on validation at {recipes['epochs'].max()} epochs, "
          f"mean over seeds (the test set is not read for it):\n\n"
          f"{markdown(recipes, SHOWN)}")
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    cli.run_cli(main)
