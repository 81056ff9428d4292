"""``shoal compare`` without Ray: config and presets, the plan, the CLI's errors, and the
orchestration (index, skip, resume, failures) with a stand-in for the ``shoal simulate`` child
that writes a run's outputs at once."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from _fed_helpers import TINY

import shoal.experiments.compare as cmp
import shoal.strategies  # noqa: F401
from shoal.cli import main
from shoal.config import ConfigError
from shoal.experiments.compare_config import (
    base_config,
    load_compare_config,
    run_config,
    strategy_names,
)
from shoal.experiments.compare_live import JobState, eta_seconds
from shoal.experiments.report import read_results_csv
from shoal.registry import STRATEGIES

FAKE_CHILD = textwrap.dedent(
    """
    import csv, json, os, sys, yaml
    run_dir = sys.argv[1]
    cfg = yaml.safe_load(open(os.path.join(run_dir, "config.yaml")))
    s, seed, rounds = cfg["fed"]["strategy"], cfg["seed"], cfg["fed"]["rounds"]
    with open(os.path.join(os.path.dirname(run_dir), "calls.log"), "a") as f:
        f.write(f"{s}/{seed}\\n")
    if s == os.environ.get("FAKE_FAIL"):
        sys.exit(3)
    base = 0.5 + 0.01 * len(s) + 0.001 * seed
    with open(os.path.join(run_dir, "metrics.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "strategy", "metric", "bucket", "value"])
        for r in range(1, rounds + 1):
            w.writerow([r, s, "gauc", "all", base + 0.01 * r])
            w.writerow([r, s, "bytes_up", "all", 100.0])
            if s.endswith("-dp"):
                w.writerow([r, s, "epsilon", "all", 0.5 * r])
    final = {"gauc": {b: base + 0.01 * rounds for b in ("all", "tail", "torso", "head")}}
    summary = {"strategy": s, "seed": seed, "devices": 39, "rounds": rounds, "final": final,
               "totals": {"bytes_up": 100.0 * rounds, "bytes_down": 50.0, "round_seconds": 1.0,
                          "failures": 0.0}}
    json.dump(summary, open(os.path.join(run_dir, "summary.json"), "w"))
    """
)


@pytest.fixture
def fake_child(tmp_path, monkeypatch):
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    monkeypatch.setattr(cmp, "simulate_command", lambda run_dir: [sys.executable, script, run_dir])
    return tmp_path / "runs" / "calls.log"


def tiny(tmp_path, *extra: str) -> list[str]:
    return [
        *TINY,
        f"out_dir={tmp_path / 'runs'}",
        f"compare.reports={tmp_path / 'reports'}",
        "compare.html=false",
        *extra,
    ]


def test_preset_shorthands_and_run_configs() -> None:
    cfg = load_compare_config(["preset=quick", "seeds=2", "strategies=fedavg,local-only"])
    assert cfg.compare.seeds == 2 and cfg.compare.strategies == ["fedavg", "local-only"]
    assert cfg.compare.name == "compare-quick"
    cfg = load_compare_config(["strategies=[cloud-only]", "name=mine", "rounds=3", "seed=5"])
    assert cfg.compare.strategies == ["cloud-only"] and cfg.compare.name == "mine"
    base = base_config(cfg)
    assert not hasattr(base, "compare") and base.fed.rounds == 3
    a, b = run_config(base, "fedavg", 6), run_config(base, "local-only", 7)
    assert (a.fed.strategy, a.seed, b.fed.strategy, b.seed) == ("fedavg", 6, "local-only", 7)
    assert a.data_seed == b.data_seed == 5  # same data for every strategy and seed
    assert a.sim == b.sim and a.split == b.split and a.fed.rounds == b.fed.rounds == 3


def test_every_registered_strategy_by_default(monkeypatch) -> None:
    cfg = load_compare_config(["seeds=2"])
    assert strategy_names(cfg) == STRATEGIES.names()
    monkeypatch.setitem(STRATEGIES._entries, "zz-new", STRATEGIES.get("fedavg"))
    jobs = cmp.plan(cfg)
    assert [j.key for j in jobs[: len(STRATEGIES.names())]] == [
        f"{s}/seed0" for s in STRATEGIES.names()
    ]
    assert jobs[-1].key == "zz-new/seed1" and len(jobs) == 2 * len(STRATEGIES.names())
    with pytest.raises(ConfigError, match="unknown strategies \\['nope'\\]; registered: "):
        strategy_names(load_compare_config(["strategies=[fedavg,nope]"]))


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["strategies=[nope]"], "unknown strategies ['nope']"),
        (["sim.usrs=3"], "unknown config key 'sim.usrs'"),
        (["seeds=many"], "'compare.seeds' (from command line) expects int"),
        (["seeds=0"], "'compare.seeds': must be >= 1"),
        (["preset=huge"], "no compare preset 'huge'; presets: "),
        (["compare.bogus=1"], "unknown config key 'compare.bogus'"),
        (["strategies=[fedavg,fedavg]"], "more than once"),
        (["name=../x"], "must be a folder name"),
    ],
)
def test_cli_errors_exit_2_with_a_message(argv, needle, capsys) -> None:
    assert main(["compare", "--no-live", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_runs_index_skip_resume_and_failures(tmp_path, fake_child, monkeypatch) -> None:
    argv = tiny(tmp_path, "strategies=[fedavg,local-only]", "seeds=2", "name=t")
    cfg = load_compare_config(argv)
    monkeypatch.setenv("FAKE_FAIL", "local-only")
    files, failed = cmp.compare(cfg, "shoal compare ...", live=False)
    assert failed == ["local-only/seed0", "local-only/seed1"]
    report = tmp_path / "reports" / "t"
    index = cmp.load_index(report)
    assert {k: v["status"] for k, v in index["runs"].items()} == {
        "fedavg/seed0": "done",
        "local-only/seed0": "failed",
        "fedavg/seed1": "done",
        "local-only/seed1": "failed",
    }
    assert fake_child.read_text().split() == [
        "fedavg/0",
        "local-only/0",
        "fedavg/1",
        "local-only/1",
    ]
    rows = read_results_csv(files.results_csv)
    assert {r["strategy"] for r in rows} == {"fedavg"} and len(rows) == 2 * (4 + 5)
    assert "**Incomplete**" in files.report_md.read_text()
    failed_dir = index["runs"]["local-only/seed0"]["run_dir"]

    # rerun: finished runs are skipped; failed ones continue in their own run directory
    monkeypatch.delenv("FAKE_FAIL")
    files, failed = cmp.compare(cfg, "shoal compare ...", live=False)
    assert failed == []
    assert fake_child.read_text().split()[4:] == ["local-only/0", "local-only/1"]
    index = cmp.load_index(report)
    assert index["runs"]["local-only/seed0"]["run_dir"] == failed_dir
    assert len(index["sessions"]) == 2 and index["sessions"][1]["ran"] == 2
    assert "Incomplete" not in files.report_md.read_text()
    run1 = Path(index["runs"]["local-only/seed1"]["run_dir"])
    summary = json.loads((run1 / "summary.json").read_text())
    got = {
        (r["metric"], r["bucket"]): r["value"]
        for r in read_results_csv(files.results_csv)
        if r["strategy"] == "local-only" and r["seed"] == 1
    }
    assert got[("gauc", "head")] == summary["final"]["gauc"]["head"]
    assert got[("bytes_total", "all")] == 2 * 100.0 + 50.0
    # more seeds later: only the new ones run
    cmp.compare(load_compare_config([*argv, "seeds=3"]), "shoal compare ...", live=False)
    assert fake_child.read_text().split()[6:] == ["fedavg/2", "local-only/2"]


def test_a_report_refuses_runs_of_other_settings(tmp_path, fake_child) -> None:
    argv = tiny(tmp_path, "strategies=[fedavg]", "seeds=1", "name=t")
    cmp.compare(load_compare_config(argv), "c", live=False)
    with pytest.raises(ConfigError, match=r"other settings \(fed.rounds: 2 -> 3\)"):
        cmp.compare(load_compare_config([*argv, "fed.rounds=3"]), "c", live=False)
    cmp.compare(load_compare_config([*argv, "fed.rounds=3", "name=t3"]), "c", live=False)
    assert fake_child.read_text().split() == ["fedavg/0", "fedavg/0"]


def test_eta_uses_finished_runs_of_the_same_strategy() -> None:
    done = [JobState("a", 0, 10, "done", seconds=30.0), JobState("b", 0, 10, "done", seconds=10.0)]
    queued = [JobState("a", 1, 10), JobState("b", 1, 10), JobState("c", 0, 10)]
    assert eta_seconds(done + queued, now=0.0) == 30.0 + 10.0 + 20.0
    running = JobState("a", 1, 10, "running", round=2, started=0.0)
    assert eta_seconds([*done, running], now=12.0) == 18.0
    assert eta_seconds([*done, JobState("a", 1, 10, "running", started=0.0)], now=45.0) == 0.0
    # nothing finished yet: the running job's rounds are extrapolated, queued ones unknown
    first = JobState("a", 0, 10, "running", round=2, started=0.0)
    assert eta_seconds([first], now=10.0) == 40.0
    assert eta_seconds([first, JobState("b", 0, 10)], now=10.0) is None
    assert eta_seconds([JobState("a", 0, 10, "running", started=0.0)], now=5.0) is None


def test_an_interrupt_stops_the_run_and_a_rerun_continues_it(tmp_path, monkeypatch) -> None:
    script = tmp_path / "slow_child.py"
    script.write_text(
        "import os, sys, time\n"
        "open(os.path.join(sys.argv[1], 'pid'), 'w').write(str(os.getpid()))\n"
        "time.sleep(120)\n"
    )
    monkeypatch.setattr(cmp, "simulate_command", lambda run_dir: [sys.executable, script, run_dir])
    polls = []

    def interrupt_on_second_poll(run_dir):
        polls.append(run_dir)
        if len(polls) == 2:
            raise KeyboardInterrupt
        return 0, float("nan")

    monkeypatch.setattr(cmp, "_latest", interrupt_on_second_poll)
    cfg = load_compare_config(tiny(tmp_path, "strategies=[fedavg]", "seeds=1", "name=t"))
    with pytest.raises(KeyboardInterrupt):
        cmp.compare(cfg, "c", live=False)
    entry = cmp.load_index(tmp_path / "reports" / "t")["runs"]["fedavg/seed0"]
    assert entry["status"] == "interrupted" and entry["seconds"] > 0
    pid = int((Path(entry["run_dir"]) / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(pid, 0)

    monkeypatch.setattr(cmp, "_latest", lambda run_dir: (0, float("nan")))
    script.write_text(FAKE_CHILD)
    _, failed = cmp.compare(cfg, "c", live=False)
    again = cmp.load_index(tmp_path / "reports" / "t")["runs"]["fedavg/seed0"]
    assert failed == [] and again["status"] == "done"
    assert again["run_dir"] == entry["run_dir"] and again["seconds"] > entry["seconds"]


def test_private_runs_add_epsilon_to_results_table_and_plots(tmp_path, fake_child) -> None:
    argv = tiny(
        tmp_path, "strategies=[fedavg,fedavg-dp]", "seeds=2", "name=dp", "compare.html=true"
    )
    files, _ = cmp.compare(load_compare_config(argv), "c", live=False)
    eps = [r for r in read_results_csv(files.results_csv) if r["metric"] == "epsilon"]
    assert [(r["strategy"], r["seed"], r["value"]) for r in eps] == [
        ("fedavg-dp", 0, 1.0),
        ("fedavg-dp", 1, 1.0),
    ]
    names = {p.name for p in files.plots}
    assert names == {"gauc_rounds.png", "gauc_buckets.png", "utility_bytes.png", "gauc_epsilon.png"}
    md = files.report_md.read_text()
    assert "| ε ↓ |" in md and "**Privacy** (`fedavg-dp`)" in md
    assert "Differences to `fedavg`, seed by seed" in md  # no cloud-only: the first strategy
    assert files.report_html is not None and "<table>" in files.report_html.read_text()
