"""experiments/compare_variants.py: variants of one evaluate.py table, named by their runs,
compared paired by seed in one Holm family."""
import subprocess
import sys

import pandas as pd

from conftest import ROOT

# test accuracy per seed: standardization at DKD's weights 2 points down, at the authors' ~0
ACCURACY = {"dkd": [78.0, 78.5, 78.2], "dkd+ls": [76.0, 76.4, 76.3],
            "dkd+ls-authors": [78.1, 78.4, 78.3]}
LABELS = {"dkd": "dkd", "dkd+ls": "dkd+ls (dkd_alpha=1.0)", "dkd+ls-authors":
          "dkd+ls (dkd_alpha=9.0)"}


def write_results(path, ema=("dkd", "dkd+ls")):
    rows = []
    for name, accuracies in ACCURACY.items():
        for seed, acc in enumerate(accuracies):
            row = {"checkpoint": f"runs/x/{name}_seed{seed}.pt", "weights": "raw",
                   "variant": LABELS[name], "seed": seed, "val_acc": acc + 1,
                   "test_acc": acc}
            rows.append(row)
            if name in ema:
                base, settings = (LABELS[name] + " ").split(" ", 1)  # as evaluate.py labels
                rows.append({**row, "weights": "ema", "variant": f"{base} EMA {settings}".strip(),
                             "test_acc": acc + 0.1})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def compare(paths, *pairs):
    """compare_variants.py on one results.csv (a path) or several (a list of paths)."""
    paths = paths if isinstance(paths, list) else [paths]
    flags = [flag for pair in pairs for flag in ("--pair", *pair)]
    return subprocess.run([sys.executable, "experiments/compare_variants.py", *paths, *flags],
                          cwd=ROOT, capture_output=True, text=True)


def table_rows(markdown):
    return {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:-1]]
            for line in markdown.splitlines()[2:]}


def test_each_pair_is_compared_by_seed_in_one_family(tmp_path):
    proc = compare(write_results(tmp_path / "results.csv"),
                   ("dkd+ls_seed*", "dkd_seed*"), ("dkd+ls-authors_seed*", "dkd_seed*"))
    assert proc.returncode == 0, proc.stderr
    accuracy, family = map(table_rows, proc.stdout.split("\n\n"))
    assert accuracy["dkd_seed*"][:2] == ["3", "78.23 ± 0.25"]
    assert accuracy["dkd_seed*"][2:] == ["79.23 ± 0.25", "dkd"]  # validation, the label
    assert "dkd_seed* EMA" in accuracy and "dkd+ls-authors_seed* EMA" not in accuracy
    # the EMA only where both sides have one: three comparisons, one Holm family
    assert list(family) == ["dkd+ls_seed* − dkd_seed*", "dkd+ls_seed* EMA − dkd_seed* EMA",
                            "dkd+ls-authors_seed* − dkd_seed*"]
    ls, _, authors = family.values()
    assert ls[0] == "3 pairs by seed" and ls[1] == "-2.00"
    assert ls[-1].startswith("dkd+ls_seed* below dkd_seed*")
    assert authors[1] == "+0.03" and authors[-1].startswith("equivalent within ±0.5")
    # Holm over the three: the smallest p times 3
    assert float(ls[4]) > float(ls[3])


def test_names_that_match_no_run_or_two_recipes_are_refused_in_one_line(tmp_path):
    path = write_results(tmp_path / "results.csv")
    for pair, says in ((("dkd+ls_seed*", "kd_seed*"), "no run is named like 'kd_seed*'"),
                       (("dkd+ls*", "dkd_seed*"), "the runs named like 'dkd+ls*' are of 2 "
                        "recipes (dkd+ls (dkd_alpha=1.0); dkd+ls (dkd_alpha=9.0)): name one")):
        proc = compare(path, pair)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"error: {says}")


def test_runs_without_a_seed_are_runs_of_their_own(tmp_path):
    """Two bare checkpoints (no seed) were refused as "seed nan twice"."""
    path = write_results(tmp_path / "results.csv")
    results = pd.read_csv(path)
    bare = results[results["checkpoint"].str.startswith("runs/x/dkd_seed")].assign(
        seed=float("nan"), checkpoint=lambda r: r["checkpoint"].str.replace("dkd_", "bare_"))
    pd.concat([results, bare]).to_csv(path, index=False)
    proc = compare(path, ("bare_*", "dkd+ls_seed*"))
    assert proc.returncode == 0, proc.stderr
    assert "3 and 3, unpaired (Welch)" in proc.stdout


def test_runs_of_one_name_in_two_folders_are_two_runs(tmp_path):
    """Two folders' dkd_seed0.pt were refused as one run "listed twice" (the run named by its
    checkpoint's stem alone); now each is named by its path where stems clash."""
    path = write_results(tmp_path / "results.csv")
    results = pd.read_csv(path)
    again = results[results["checkpoint"].str.startswith("runs/x/dkd_seed")].assign(
        checkpoint=lambda r: r["checkpoint"].str.replace("runs/x/", "runs/y/"),
        test_acc=lambda r: r["test_acc"] + 1)
    pd.concat([results, again]).to_csv(path, index=False)
    proc = compare(path, ("runs/y/dkd_seed*", "runs/x/dkd_seed*"))
    assert proc.returncode == 0, proc.stderr
    family = table_rows(proc.stdout.split("\n\n")[1])
    assert family["runs/y/dkd_seed* − runs/x/dkd_seed*"][1] == "+1.00"
    # the other runs, their stems unique, keep their short names
    assert compare(path, ("dkd+ls_seed*", "runs/x/dkd_seed*")).returncode == 0


def test_a_mean_teacher_runs_second_model_is_called_its_teacher(tmp_path):
    """train_ema.py's mean-teacher runs keep their teacher as the `ema` weights: labelled
    "EMA" here, though evaluate.py calls it "<variant> teacher"."""
    path = write_results(tmp_path / "results.csv")
    results = pd.read_csv(path)
    results["variant"] = results["variant"].str.replace(" EMA", " teacher")
    results.to_csv(path, index=False)
    proc = compare(path, ("dkd+ls_seed*", "dkd_seed*"))
    assert proc.returncode == 0, proc.stderr
    accuracy, family = map(table_rows, proc.stdout.split("\n\n"))
    assert "dkd_seed* teacher" in accuracy and "dkd_seed* EMA" not in accuracy
    assert "dkd+ls_seed* teacher − dkd_seed* teacher" in family


def test_a_study_evaluated_in_parts_is_compared_as_one_table(tmp_path):
    """A study whose seeds are evaluated one session at a time (docs/results.md, "Each seed's
    own teacher") leaves one results.csv per seed: read together, they compare as the one
    table they make, and a run in two of them with two accuracies is refused."""
    pairs = ("dkd+ls_seed*", "dkd_seed*"), ("dkd+ls-authors_seed*", "dkd_seed*")
    whole = compare(write_results(tmp_path / "results.csv"), *pairs)
    results = pd.read_csv(tmp_path / "results.csv")
    parts = []
    for seed, part in results.groupby("seed"):
        parts.append(tmp_path / f"seed{seed}.csv")
        part.to_csv(parts[-1], index=False)
    in_parts = compare(parts, *pairs)
    assert whole.returncode == in_parts.returncode == 0, in_parts.stderr
    assert in_parts.stdout == whole.stdout
    clash = results[results["seed"] == 0].assign(test_acc=lambda r: r["test_acc"] + 1)
    clash.to_csv(tmp_path / "again.csv", index=False)
    proc = compare([*parts, tmp_path / "again.csv"], *pairs)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "listed twice" in proc.stderr and "again.csv" in proc.stderr
