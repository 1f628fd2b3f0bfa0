"""The GPU check's summary, from the folder benchmarks/gpu_check.sh fills: device and torch,
minutes per stage and in total, process start-up, images/s per run, and each test accuracy
beside the CPU's bf16 seeds (benchmarks/cpu_reference.csv): their mean ± std and whether
the GPU's lies inside their 95% prediction interval. Standard library only, so that it runs
with a bare python3 (no scipy on the GPU machine).

    python3 benchmarks/gpu_summary.py CHECK_DIR
"""
import csv
import math
import re
import statistics
import sys
from pathlib import Path

REFERENCE = Path(__file__).with_name("cpu_reference.csv")
# Student's t, 97.5% quantile, by degrees of freedom: typed in from a table, as the GPU
# machine has no scipy; the reference has a few seeds per variant (3: 2 degrees of freedom).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
         16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042}


def t_975(df):
    """T_975 at `df`, or at the largest tabled df below it: the quantile falls with df, so
    an interval between tabled values is a little wider than exact, never narrower."""
    return T_975[max(d for d in T_975 if d <= df)]


def prediction_interval(values):
    """The 95% prediction interval of one more run, from the seeds' `values` (normal model):
    mean ± t(0.975, n - 1) * std * sqrt(1 + 1/n); None from fewer than 2 seeds."""
    if len(values) < 2:
        return None
    n, mean, std = len(values), statistics.mean(values), statistics.stdev(values)
    half = t_975(n - 1) * std * math.sqrt(1 + 1 / n)
    return mean - half, mean + half


def read_rows(path, delimiter=","):
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader((line for line in f if not line.startswith("#")),
                                   delimiter=delimiter))


def reference_seeds(path=REFERENCE):
    seeds = {}
    for row in read_rows(path):
        seeds.setdefault(row["variant"], []).append(float(row["test_acc"]))
    return seeds


def accuracy_rows(results, reference):
    """One line per variant that evaluate.py scored: the GPU's accuracy, the CPU's."""
    lines = ["| variant | GPU test % | CPU bf16 test %, mean ± std (seeds) | 95% prediction "
             "interval | GPU inside |", "|---|---|---|---|---|"]
    for row in results:
        variant, acc = row["variant"], float(row["test_acc"])
        seeds = reference.get(variant)
        if seeds is None:
            lines.append(f"| {variant} | {acc:.2f} | (no CPU reference) | | |")
            continue
        if len(seeds) < 2:
            lines.append(f"| {variant} | {acc:.2f} | {seeds[0]:.2f} (1) | (one seed: none) | |")
            continue
        low, high = prediction_interval(seeds)
        lines.append(f"| {variant} | {acc:.2f} | {statistics.mean(seeds):.2f} ± "
                     f"{statistics.stdev(seeds):.2f} ({len(seeds)}) | {low:.2f} - {high:.2f} | "
                     f"{'yes' if low <= acc <= high else 'NO'} |")
    return lines


def cuda_tests_outcome(log):
    """The `cuda` tests' outcome from pytest's log: its closing counts and each failure, or,
    for a run cut short, the tests that finished (-v names each as it ends)."""
    lines = log.splitlines()
    counts = [line.strip("= ") for line in lines
              if re.search(r"\d+ (passed|failed|errors?|skipped)\b.* in ", line)]
    failures = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    if counts:
        return [f"cuda tests: {counts[-1]}", *(f"- {line}" for line in failures)]
    done = [line for line in lines if re.search(r" (PASSED|FAILED|ERROR|SKIPPED)", line)]
    passed = sum(" PASSED" in line for line in done)
    return [f"cuda tests: cut short after {len(done)} ({passed} passed)",
            *(f"- {line}" for line in done if " PASSED" not in line)]


def highest_gb(rows, column):
    """The highest of the epochs' `column` (MiB), in GB with two decimals; blank where no
    epoch recorded it."""
    values = [float(row[column]) for row in rows if row.get(column)]
    return f"{max(values) / 1024:.2f}" if values else ""


def summary(check):
    check = Path(check)
    gpu = (check / "gpu.txt").read_text().strip() if (check / "gpu.txt").is_file() else "?"
    lines = ["# GPU check", "", gpu, "", "| stage | minutes |", "|---|---|"]
    timings = read_rows(check / "timings.tsv", "\t")
    lines += [f"| {row['stage']} | {float(row['seconds']) / 60:.2f} |" for row in timings
              if not row["stage"].startswith("start-up")]
    startup = [f"{row['stage'][len('start-up: '):]} {float(row['seconds']):.1f} s"
               for row in timings if row["stage"].startswith("start-up")]
    if startup:
        lines += ["", "start-up of one training process (measured once, in a process of its "
                      "own): " + ", ".join(startup)]
    runs = []
    for metrics in sorted((check / "runs").glob("*.metrics.csv")):
        rows = read_rows(metrics)
        if rows:
            speed = statistics.median(float(row["images_per_second"]) for row in rows)
            peaks = [highest_gb(rows, column)
                     for column in ("peak_memory_mb", "cuda_peak_memory_mb")]
            runs.append(f"| {metrics.name[:-len('.metrics.csv')]} | {speed:,.0f} | "
                        + " | ".join(peaks) + " |")
    if runs:
        lines += ["", "| run | images/s (median epoch) | peak memory, host (GB) | peak memory, "
                      "GPU tensors (GB) |", "|---|---|---|---|", *runs]
    if (check / "tests.log").is_file():
        lines += ["", *cuda_tests_outcome((check / "tests.log").read_text())]
    results = read_rows(check / "results.csv")
    if results:
        lines += ["", *accuracy_rows(results, reference_seeds())]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 benchmarks/gpu_summary.py CHECK_DIR")
    print(summary(sys.argv[1]))
