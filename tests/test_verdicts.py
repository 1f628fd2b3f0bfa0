"""experiments/verdicts.py: the tests it makes from a summary agree with report.py's on runs
that have that summary (n = 3: mean m, std s for m - s, m, m + s)."""
import sys

import pytest

pytest.importorskip("statsmodels")

from conftest import ROOT  # noqa: E402
from report import compare, equivalence  # noqa: E402

sys.path.insert(0, str(ROOT / "experiments"))
from verdicts import paired_from_summary, welch_from_summary  # noqa: E402


def runs(mean, std):
    return [mean - std, mean, mean + std]


def test_welch_from_a_summary_is_welch_on_the_runs():
    summary = welch_from_summary((78.96, 0.16), (78.58, 0.35))
    result = compare(runs(78.96, 0.16), runs(78.58, 0.35))
    for key in ("diff", "ci_low", "ci_high", "p"):
        assert summary[key] == pytest.approx(result[key])


def test_paired_from_a_summary_is_the_paired_test_and_tost_on_the_runs():
    for mean in (-0.18, 0.3):  # each TOST margin binds in turn
        summary = paired_from_summary(mean, 0.08)
        raw = [70.0, 75.0, 80.0]
        ema = [r + d for r, d in zip(raw, runs(mean, 0.08))]
        result = compare(ema, raw, paired=True)
        for key in ("diff", "ci_low", "ci_high", "p"):
            assert summary[key] == pytest.approx(result[key])
        assert summary["tost"] == pytest.approx(equivalence(ema, raw))
