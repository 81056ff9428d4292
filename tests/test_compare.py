"""``shoal compare`` end to end: two strategies × two seeds of a tiny federation, each in its
own ``shoal simulate`` process, then the report; a rerun skips the finished runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from _fed_helpers import TINY

from shoal.cli import main
from shoal.experiments.compare import load_index
from shoal.experiments.report import read_results_csv

STRATEGIES = ("cloud-only", "fedavg")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    argv = [
        "compare",
        "--no-live",
        f"strategies=[{','.join(STRATEGIES)}]",
        "seeds=2",
        "name=tiny",
        *TINY,
        "fed.actors=1",  # one actor starts faster; 40 devices need no second
        f"out_dir={root / 'runs'}",
        f"compare.reports={root / 'reports'}",
    ]
    assert main(argv) == 0
    return root, argv


def test_report_files_and_table(compared) -> None:
    root, _ = compared
    report = root / "reports" / "tiny"
    for f in ("report.md", "report.html", "results.csv", "index.json", "config.yaml"):
        assert (report / f).is_file(), f
    for f in ("gauc_rounds.png", "gauc_buckets.png", "utility_bytes.png"):
        assert (report / f).stat().st_size > 1000, f
    assert not (report / "gauc_epsilon.png").exists()  # no private run
    md = (report / "report.md").read_text()
    assert "2 strategies × 2 seeds" in md and "mean ± 95% confidence interval" in md
    assert "| strategy | seeds | GAUC ↑ | GAUC tail ↑ |" in md
    for s in STRATEGIES:
        assert f"| `{s}` | 2 | " in md
    for f in ("gauc_rounds.png", "gauc_buckets.png", "utility_bytes.png"):
        assert f"]({f})" in md
    assert "shoal compare --no-live 'strategies=[cloud-only,fedavg]' seeds=2 name=tiny" not in md
    assert "shoal compare 'strategies=[cloud-only,fedavg]' seeds=2 name=tiny" in md
    assert f"shoal compare --config {report / 'config.yaml'}" in md
    assert "data:image/png;base64," in (report / "report.html").read_text()


def test_results_csv_holds_every_runs_final_values(compared) -> None:
    root, _ = compared
    report = root / "reports" / "tiny"
    rows = read_results_csv(report / "results.csv")
    index = load_index(report)
    assert sorted(index["runs"]) == sorted(f"{s}/seed{k}" for s in STRATEGIES for k in (0, 1))
    data_dirs = set()
    for key, entry in index["runs"].items():
        assert entry["status"] == "done" and entry["seconds"] > 0
        run_dir = Path(entry["run_dir"])
        summary = json.loads((run_dir / "summary.json").read_text())
        cfg_seed = summary["seed"]
        assert key == f"{summary['strategy']}/seed{cfg_seed}"
        mine = {
            (r["metric"], r["bucket"]): r["value"]
            for r in rows
            if r["strategy"] == summary["strategy"] and r["seed"] == cfg_seed
        }
        expected = {(m, b): v for m, by in summary["final"].items() for b, v in by.items()}
        expected.update({(k, "all"): v for k, v in summary["totals"].items()})
        t = summary["totals"]
        expected[("bytes_total", "all")] = t["bytes_up"] + t["bytes_down"]
        assert mine == pytest.approx(expected, nan_ok=True)  # tiny buckets may be empty
        assert ("gauc", "head") in mine and 0.0 < mine[("gauc", "all")] < 1.0
        data_dirs.add(json.loads((run_dir / "run.json").read_text())["data_dir"])
    assert len(data_dirs) == 1  # every strategy and seed on the same data
    assert len(rows) == 4 * len(mine)


def test_rerun_skips_finished_runs(compared) -> None:
    root, argv = compared
    report = root / "reports" / "tiny"
    before = load_index(report)["runs"]
    logs = {p.name: p.stat().st_size for p in (report / "logs").iterdir()}
    runs = sorted(p.name for p in (root / "runs").iterdir())
    t0 = time.monotonic()
    assert main(argv) == 0
    assert time.monotonic() - t0 < 15.0  # no simulation started
    index = load_index(report)
    assert index["runs"] == before
    assert index["sessions"][-1]["ran"] == 0 and len(index["sessions"]) == 2
    # the report's "Reproduce" command (its resolved config) names the same runs
    assert main(["compare", "--no-live", "--config", str(report / "config.yaml")]) == 0
    assert load_index(report)["runs"] == before
    assert {p.name: p.stat().st_size for p in (report / "logs").iterdir()} == logs
    assert sorted(p.name for p in (root / "runs").iterdir()) == runs
