"""experiments/power.py and report.py's power of a paired design: how likely its seeds are to
resolve a difference of a given size, or to call two recipes equivalent when they are."""
import subprocess
import sys

import numpy as np
import pytest

# the GPU machine has neither: there `pytest -m cuda tests` must collect this module, skipped
pytest.importorskip("scipy")
pytest.importorskip("statsmodels")

from scipy import stats  # noqa: E402
from statsmodels.stats.weightstats import ttost_paired  # noqa: E402

from conftest import ROOT  # noqa: E402
from report import difference_power, equivalence_power  # noqa: E402


@pytest.mark.parametrize("seeds, sd, difference", [(5, 0.3, 0.0), (3, 0.2, 0.1), (8, 0.4, 0.2)])
def test_the_equivalence_power_is_how_often_statsmodels_tost_says_equivalent(seeds, sd,
                                                                           difference):
    """Against the test it predicts, run on simulated seeds: statsmodels' paired TOST at the
    same margin and level (the report's own test), 4,000 studies."""
    rng = np.random.default_rng(0)
    studies = 4000
    equivalent = sum(ttost_paired(d, np.zeros(seeds), -0.5, 0.5)[0] < 0.05
                     for d in rng.normal(difference, sd, (studies, seeds)))
    simulated = equivalent / studies
    assert abs(equivalence_power(seeds, sd, difference) - simulated) < 0.025, simulated


@pytest.mark.parametrize("seeds, sd, difference", [(3, 0.3, 0.45), (5, 0.4, 0.45), (3, 0.2, 0.91)])
def test_the_difference_power_is_how_often_the_paired_t_test_resolves_it(seeds, sd, difference):
    """Against scipy's paired t-test on simulated seeds, 20,000 studies; the third design is
    one where statsmodels' TTestPower gives NaN."""
    rng = np.random.default_rng(1)
    d = rng.normal(difference, sd, (20000, seeds))
    simulated = np.mean(stats.ttest_1samp(d, 0, axis=1).pvalue < 0.05 / 4)
    assert abs(difference_power(seeds, sd, difference, family=4) - simulated) < 0.015, simulated


def test_the_power_grows_with_seeds_and_falls_with_spread_and_a_larger_family():
    assert difference_power(3, 0.2, 0.9) < difference_power(5, 0.2, 0.9)
    assert difference_power(5, 0.4, 0.45) < difference_power(5, 0.2, 0.45)
    assert difference_power(5, 0.2, 0.45, family=4) < difference_power(5, 0.2, 0.45)
    assert equivalence_power(10, 0.3) > equivalence_power(5, 0.3) > equivalence_power(3, 0.3)
    assert equivalence_power(5, 0.3, family=4) < equivalence_power(5, 0.3)
    # at the margin itself TOST says "equivalent" at most at its level: its size
    assert 0.01 < equivalence_power(5, 0.3, difference=0.5) <= 0.05
    assert equivalence_power(5, 0.3, difference=0.8) < 0.01


def test_the_table_gives_each_design_its_power(tmp_path):
    proc = subprocess.run([sys.executable, "experiments/power.py", "--seeds", "3", "5",
                           "--sd", "0.2", "--difference", "0.45", "0.91", "--family", "4"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| ")]
    header, body = rows[0], rows[1:]
    assert [cell.strip() for cell in header[:2]] == ["seeds", "sd of the differences"]
    assert len(body) == 2  # one row per seed count and spread
    three, five = ([float(cell.strip().rstrip("%")) for cell in row[2:]] for row in body)
    assert three == [round(100 * difference_power(3, 0.2, d, family=4)) for d in (0.45, 0.91)] \
        + [round(100 * equivalence_power(3, 0.2, family=4))]
    assert all(b >= a for a, b in zip(three, five))


def test_a_spread_of_zero_or_one_seed_is_refused_in_one_line():
    for flags, says in ((["--sd", "0"], "--sd: 0 is not above 0"),
                        (["--seeds", "1"], "--seeds: 1 is too few")):
        proc = subprocess.run([sys.executable, "experiments/power.py", *flags], cwd=ROOT,
                              capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert says in proc.stderr, proc.stderr
