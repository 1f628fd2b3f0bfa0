"""Do two sets of runs of the same pipeline agree? Per variant, the test accuracy of each
(mean ± std over seeds), the difference with its 95% interval, paired by seed where both
have runs of that seed (report.compare_runs), and a verdict: the variants are one family,
Holm-adjusted; "equivalent within ±0.5 points" only from a paired TOST (report.MARGIN).
Then every variant both hold at two seeds or more, pooled over the seeds all of them hold:
each seed's mean over them, paired by seed. What is left out (a variant in one table
only, a seed or a variant left out of the pooling) is named on stderr. Runs are matched
by name (evaluate.py's `checkpoint` column, or a trimmed copy's `run`).
For a change that should not move accuracy: another precision, device, machine or library
version.

    python experiments/compare_results.py runs/fp32/results.csv plots/results.csv \
        --names fp32 bf16
    python experiments/compare_results.py experiments/h200_runs.csv \
        experiments/methods_xeon.csv --names H200 Xeon
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kd import cli  # noqa: E402
from kd.results import is_second_model, markdown, seed_table, variant_rank  # noqa: E402
from report import compare_runs, family_table, one_row_per_run, read_results  # noqa: E402


def compare_results(a, b, names):
    """One row per variant that both results (evaluate.py's results.csv) hold: b − a, paired
    by seed (the same variant and seed in both share initialisation and batch order). Each
    variant tested unpaired, with two runs or more a side, is named on stderr."""
    variants = common_variants(a, b)
    tests = [(names[1], names[0], compare_runs(*(r[r["variant"] == variant] for r in (b, a)),
                                               ["seed"])) for variant in variants]
    for variant, (_, _, result) in zip(variants, tests):
        note_unpaired(variant, result)
    table = family_table(tests, ["variant", f"{names[1]} − {names[0]} (points)"])
    if table.empty:
        return table
    table["variant"] = variants
    tables = [seed_table(r, ["variant"]).set_index("variant") for r in (a, b)]
    for position, (name, t) in enumerate(zip(names, tables), start=1):
        table.insert(position, name, [f"{t.at[v, 'test_acc']} ({t.at[v, 'seeds']})"
                                      for v in variants])
    return table


def common_variants(a, b):
    both = set(a["variant"]) & set(b["variant"])
    return sorted(both, key=lambda v: (variant_rank(v.removesuffix(" EMA")), v))


def pooled(a, b, names):
    """Every variant both hold at two seeds or more (their first models: no EMA), pooled
    over the seeds all of those hold: per seed, the mean test accuracy over the variants,
    b − a paired by seed. Pooled per seed, not as one pair per variant and seed, because the
    runs of one seed share a teacher (and a machine's teacher of that seed): their
    differences are not independent. Like for like: each seed's mean is over the same
    variants; the runs and variants left out for it are named on stderr. None with fewer
    than two such seeds."""
    variants = [v for v in common_variants(a, b) if not is_second_model(v)]
    rows = [r[r["variant"].isin(variants)].dropna(subset=["seed"])[["variant", "seed",
                                                                     "test_acc"]]
            for r in (a, b)]
    both = rows[0].merge(rows[1], on=["variant", "seed"], suffixes=("_a", "_b"))
    seeds_of = both.groupby("variant", sort=False)["seed"].agg(set)
    too_few = seeds_of[seeds_of.map(len) < 2]
    kept = seeds_of.drop(too_few.index)
    seeds = set.intersection(*kept) if len(kept) else set()
    if len(seeds) < 2:
        return None
    left_out = [f"{v} seed{'s' * (len(extra) > 1)} {', '.join(f'{s:g}' for s in sorted(extra))}"
                for v, extra in ((v, s - seeds) for v, s in kept.items()) if extra]
    left_out += [f"{v} ({len(s)} seed in common)" for v, s in too_few.items()]
    if left_out:
        print(f"note: pooled over seeds {', '.join(f'{s:g}' for s in sorted(seeds))}; "
              f"left out: {', '.join(left_out)}", file=sys.stderr)
    both = both[both["variant"].isin(kept.index) & both["seed"].isin(seeds)]
    means = both.groupby("seed")[["test_acc_a", "test_acc_b"]].mean().reset_index()
    count = both["variant"].nunique()
    label = (f"{count} variant{'s' * (count > 1)}, {len(both)} runs a side, "
             "each seed's mean")
    test = compare_runs(*(means.rename(columns={f"test_acc_{side}": "test_acc"})
                          for side in ("b", "a")), ["seed"])
    table = family_table([(names[1], names[0], test)],
                         ["pooled", f"{names[1]} − {names[0]} (points)"])
    table["pooled"] = label
    return table


def same_labels(a, b):
    """b relabelled with a's variant labels where a holds a run of the same name and weights:
    evaluate.py names in a label only the settings that tell apart the runs it read, so two
    evaluations may label one recipe two ways ("crd" and "crd (crd_weight=0.2, epochs=12)")."""
    key = [column for column in ("run", "weights") if column in a and column in b]
    labels = a.drop_duplicates(key).set_index(key)["variant"]
    found = b.set_index(key).index.map(labels.get)
    return b.assign(variant=[label if isinstance(label, str) else variant
                             for label, variant in zip(found, b["variant"])])


def unique_seeds(results, variants, path):
    """Refuse in one line a variant of `variants` with two runs of one seed in `results`:
    two recipes under one label, which a pairing by seed would mix up."""
    # runs without a seed pair with none (compare_runs: unpaired); duplicated() would
    # match their NaNs with each other
    shared = results[results["variant"].isin(variants)].dropna(subset=["seed"])
    twice = shared[shared.duplicated(["variant", "seed"], keep=False)]
    if not twice.empty:
        first = twice.iloc[0]
        runs = ", ".join(sorted(twice[(twice["variant"] == first["variant"]) &
                                      (twice["seed"] == first["seed"])]["run"]))
        raise cli.UserError(f"{path}: variant {first['variant']} has two runs of seed "
                            f"{first['seed']} ({runs}); give a table with one of them")


def note_one_sided(a, b, names):
    """Name on stderr the variants one table holds and the other does not (as report.py's
    "Not compared" line does): a label that differs between them drops a variant too."""
    common = set(common_variants(a, b))
    alone = [f"{v} ({name})" for frame, name in zip((a, b), names)
             for v in frame["variant"].drop_duplicates() if v not in common]
    if alone:
        print(f"note: not compared, in one table only: {'; '.join(alone)}", file=sys.stderr)


def note_unpaired(variant, result):
    """Name on stderr a variant compare_runs compared unpaired with two runs or more a side
    (by Welch's test, or by none where neither side varies), as the two share fewer than
    two seeds of it, where this comparison is meant to pair by seed (with one run a side,
    its table says there is no test)."""
    if not result["unpaired"]:
        return
    common = sorted(result["in_common"]["seed"])
    listed = f" ({', '.join(f'{s:g}' for s in common)})" if common else ""
    how = ("compared unpaired (Welch's test), not by seed" if result["test"] == "welch" else
           f"compared unpaired, not by seed (no test: {result['no_test']})")
    print(f"note: {variant}: {len(common)} seed{'' if len(common) == 1 else 's'} in "
          f"common{listed}, fewer than 2: {how}", file=sys.stderr)


def main():
    parser = cli.parser(__doc__)
    parser.add_argument("results", nargs=2, help="two results.csv files of evaluate.py")
    parser.add_argument("--names", nargs=2, default=("A", "B"),
                        help="what to call them in the table (default: A B)")
    args = parser.parse_args()
    for path in args.results:
        if not Path(path).is_file():
            raise cli.UserError(f"no {path}: run evaluate.py to write it")
    a, b = (one_row_per_run(read_results(path, ["variant", "seed", "test_acc"]), path)
            for path in args.results)
    b = same_labels(a, b)
    for results, path in zip((a, b), args.results):
        unique_seeds(results, common_variants(a, b), path)
    note_one_sided(a, b, args.names)
    table = compare_results(a, b, args.names)
    if table.empty:
        raise cli.UserError("the two results have no variant in common")
    print(markdown(table))
    pool = pooled(a, b, args.names)
    if pool is not None:
        print()
        print(markdown(pool))


if __name__ == "__main__":
    cli.run_cli(main)
