"""``shoal compare`` statistics: Student-t intervals, wins, the summary table, rendering."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from shoal.experiments.report import (
    COLUMNS,
    choose_baseline,
    paired_differences,
    summary_table,
)
from shoal.experiments.report_render import (
    paired_block,
    table_block,
    to_html,
    to_markdown,
    verdict_items,
)
from shoal.experiments.report_stats import Interval, fmt, judge, mean_ci


def test_mean_ci_matches_hand_computation() -> None:
    # mean 0.61, sample std 0.01, t_{0.975, 2} = 4.302653 (t table: 4.303)
    iv = mean_ci([0.60, 0.62, 0.61])
    assert iv.mean == pytest.approx(0.61)
    assert iv.half == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-6)
    assert iv.n == 3
    # two seeds: t_{0.975, 1} = 12.7062; s = |a - b| / sqrt(2)
    iv = mean_ci([0.5, 0.6])
    assert iv.half == pytest.approx(12.7062 * (0.1 / math.sqrt(2)) / math.sqrt(2), rel=1e-5)


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_mean_ci_equals_scipy_t_interval(confidence) -> None:
    v = [0.581, 0.594, 0.577, 0.602, 0.588]
    iv = mean_ci(v, confidence)
    lo, hi = stats.t.interval(confidence, len(v) - 1, loc=sum(v) / 5, scale=stats.sem(v))
    assert (iv.low, iv.high) == (pytest.approx(lo), pytest.approx(hi))


def test_mean_ci_edge_cases() -> None:
    one = mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.half) and one.n == 1
    assert mean_ci([0.3, 0.3, 0.3]).half == 0.0
    with pytest.raises(ValueError, match="at least one value"):
        mean_ci([])
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=1.5)
    assert fmt(one) == "0.7000" and fmt(Interval(0.5, 0.01234, 3)) == "0.5000 ± 0.0123"


def test_leader_wins_only_when_no_interval_overlaps() -> None:
    a, b = Interval(0.60, 0.01, 3), Interval(0.55, 0.02, 3)  # [0.59, 0.61] vs [0.53, 0.57]
    v = judge({"a": a, "b": b})
    assert (v.leader, v.win, v.overlaps) == ("a", True, ())
    # the runner-up is clear, but a third strategy's wide interval reaches the leader's
    v = judge({"a": a, "b": b, "c": Interval(0.50, 0.095, 3)})  # c up to 0.595 > 0.59
    assert (v.leader, v.win, v.overlaps) == ("a", False, ("c",))
    # touching intervals are a tie, not a win
    assert not judge({"a": Interval(0.6, 0.01, 3), "b": Interval(0.58, 0.01, 3)}).win


def test_lower_is_better_and_degenerate_columns() -> None:
    loss = {"a": Interval(0.30, 0.01, 3), "b": Interval(0.20, 0.01, 3)}
    assert judge(loss, higher=False).leader == "b" and judge(loss, higher=False).win
    assert judge(loss, higher=True).leader == "a"
    assert judge({"a": Interval(0.6, 0.01, 3)}) == judge({"a": Interval(0.6, 0.01, 3)})
    assert not judge({"a": Interval(0.6, 0.01, 3)}).win  # nothing to beat
    one_seed = {"a": Interval(0.9, math.nan, 1), "b": Interval(0.1, math.nan, 1)}
    assert judge(one_seed).leader == "a" and not judge(one_seed).win
    equal = {"a": Interval(2.0, 0.0, 3), "b": Interval(2.0, 0.0, 3)}
    assert not judge(equal, higher=False).win
    assert judge({}).leader is None


def _rows(strategy: str, metric: str, values: list[float], bucket: str = "all") -> list[dict]:
    return [
        dict(strategy=strategy, seed=k, metric=metric, bucket=bucket, value=v)
        for k, v in enumerate(values)
    ]


def test_summary_table_by_hand() -> None:
    rows = (
        _rows("fedavg", "gauc", [0.60, 0.61, 0.62])
        + _rows("cloud-only", "gauc", [0.55, 0.56, 0.54])
        + _rows("fedavg", "bytes_total", [3e6, 3e6, 3e6])
        + _rows("cloud-only", "bytes_total", [1e6, 1e6, 1e6])
        + _rows("fedavg", "logloss", [0.20, 0.30, 0.25])
        + _rows("cloud-only", "logloss", [0.21, 0.26, 0.31])
    )
    t = summary_table(rows, ["cloud-only", "fedavg"])
    assert [c.label for c in t.columns] == ["GAUC", "logloss", "MB exchanged"]  # no ε, buckets
    gauc, loss, mb = t.columns
    half = stats.t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    assert t.cells[("fedavg", gauc)].mean == pytest.approx(0.61)
    assert t.cells[("fedavg", gauc)].half == pytest.approx(half)
    assert t.cells[("cloud-only", mb)] == Interval(1.0, 0.0, 3)  # bytes shown in MB
    assert (t.verdicts[gauc].leader, t.verdicts[gauc].win) == ("fedavg", True)
    assert (t.verdicts[mb].leader, t.verdicts[mb].win) == ("cloud-only", True)
    assert t.verdicts[loss].leader == "fedavg" and not t.verdicts[loss].win
    assert t.seeds("fedavg") == 3

    block = table_block(t)
    assert block.header == ["strategy", "seeds", "GAUC ↑", "logloss ↓", "MB exchanged ↓"]
    fed, cloud = block.rows[1], block.rows[0]
    assert fed[2] == f"**0.6100 ± {half:.4f}**" and not cloud[2].startswith("**")
    assert not fed[3].startswith("**") and cloud[4] == "**1.00 ± 0.00**"
    md = to_markdown([block])
    assert md.splitlines()[1] == "|---|---|---|---|---|"
    items = verdict_items(t)
    assert any("logloss" in i and "no winner" in i and "`cloud-only`" in i for i in items)
    page = to_html([block], image_dir=None, title="t")
    assert "<b>0.6100" in page and "<code>fedavg</code>" in page


def test_epsilon_column_appears_when_a_run_reports_it() -> None:
    rows = _rows("fedavg-dp", "epsilon", [2.0, 2.1]) + _rows("fedavg", "gauc", [0.6, 0.61])
    t = summary_table(rows, ["fedavg", "fedavg-dp"])
    assert [c.metric for c in t.columns] == ["gauc", "epsilon"]
    eps = t.columns[1]
    assert ("fedavg", eps) not in t.cells and t.cells[("fedavg-dp", eps)].n == 2
    assert table_block(t).rows[0][3] == "—"
    assert {c.metric for c in COLUMNS} >= {"gauc", "bytes_total", "epsilon"}


def test_paired_differences_by_hand() -> None:
    # seed effects are shared: base 0.50, 0.60, 0.55; fedavg is +0.010, +0.012, +0.011
    rows = _rows("cloud-only", "gauc", [0.50, 0.60, 0.55]) + _rows(
        "fedavg", "gauc", [0.510, 0.612, 0.561]
    )
    rows += _rows("local-only", "gauc", [0.49, 0.61])  # a seed is missing: pairs only
    base = choose_baseline(["fedavg", "cloud-only", "local-only"])
    assert base == "cloud-only"
    d = paired_differences(rows, ["cloud-only", "fedavg", "local-only"], base)
    gauc = COLUMNS[0]
    assert set(d) == {("fedavg", gauc), ("local-only", gauc)}
    half = stats.t.ppf(0.975, 2) * 0.001 / math.sqrt(3)  # differences' std is 0.001
    assert d[("fedavg", gauc)].mean == pytest.approx(0.011)
    assert d[("fedavg", gauc)].half == pytest.approx(half)
    assert d[("local-only", gauc)].n == 2 and d[("local-only", gauc)].mean == pytest.approx(0.0)
    # the unpaired table cannot tell them apart; the paired one can
    assert not summary_table(rows, ["cloud-only", "fedavg"]).verdicts[gauc].win
    block = paired_block(d, ["cloud-only", "fedavg", "local-only"], base)
    assert block.header[:2] == ["strategy", "Δ GAUC"]
    assert block.rows[0][:2] == ["`fedavg`", f"**+0.0110 ± {half:.4f}**"]
    assert not block.rows[1][1].startswith("**")
    assert choose_baseline(["fedavg", "local-only"]) == "fedavg"
    with pytest.raises(ValueError, match="baseline 'x' is not compared"):
        choose_baseline(["fedavg"], "x")
