"""`shoal experiment privacy-utility` on a tiny configuration."""

from __future__ import annotations

import json

from _fed_helpers import TINY

from shoal.cli import main
from shoal.experiments import privacy_utility as pu


def test_privacy_utility_writes_table_and_plot_and_resumes(tmp_path) -> None:
    out = tmp_path / "pu"
    tiny = [o for o in TINY if not o.startswith("fed.rounds")]
    argv = [
        "experiment",
        "privacy-utility",
        "--out",
        str(out),
        "--variants",
        "FedAvg (no DP);DP-FedAvg z=1.0",
        *tiny,
        "fed.rounds=2",
        "fed.eval_every=2",
        "sim.users=40",
        "fed.fraction=0.5",
        "fed.eval_fraction=1.0",
    ]
    assert main(argv) == 0
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["label"] for r in lines] == ["FedAvg (no DP)", "DP-FedAvg z=1.0"]
    base, dp = (r["summary"] for r in lines)
    assert "privacy" not in base and dp["privacy"]["epsilon"] > 0
    table = (out / "table.md").read_text()
    rel = (dp["final"]["gauc"]["all"] / base["final"]["gauc"]["all"] - 1) * 100
    assert f"{rel:+.2f}%" in table and f"{dp['privacy']['epsilon']:.3g}" in table
    assert (out / "privacy_utility.png").stat().st_size > 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert main(argv) == 0  # resumed: nothing reruns
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs


def test_unknown_variant_is_refused(tmp_path) -> None:
    import pytest

    with pytest.raises(ValueError, match="unknown variants"):
        pu.run(tmp_path, [], ["FedAvg (no DP)", "magic"])
