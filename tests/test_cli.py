"""The ``shoal`` command line: subcommands, overrides, errors, run directories."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from shoal.cli import main
from shoal.datasets import storage


def test_help_lists_subcommands(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "data" in out and "experiment" in out
    for sub in (["data", "describe"], ["data", "generate"], ["experiment", "sim-signals"]):
        with pytest.raises(SystemExit):
            main([*sub, "--help"])
        assert "key=value" in capsys.readouterr().out


def test_installed_entry_point_runs() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert r.stdout.startswith("shoal ")


def test_describe_sim_json_with_overrides_and_show_config(capsys) -> None:
    argv = ["data", "describe", "--json", "--show-config", "sim.users=120", "sim.items=2000"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    cfg_text, js = out.split("\n{", 1)
    assert yaml.safe_load(cfg_text)["sim"]["users"] == 120
    stats = json.loads("{" + js)
    assert stats["users"] == 120 and stats["requests"] > 0
    assert 0.02 < stats["ctr"] < 0.1
    assert set(stats["ie_seq_len"]) == {"p10", "p25", "p50", "p75", "p90", "p99"}
    assert sum(stats["splits"].values()) == stats["requests"]


def test_describe_kuairand(capsys) -> None:
    assert main(["data", "describe", "--json", "dataset=kuairand"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] == 799 and stats["exposures"] == 35770
    assert abs(stats["ctr"] - 0.177) < 0.002


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["sim.usrs=3"], "unknown config key 'sim.usrs'"),
        (["sim.users=many"], "'sim.users' (from command line) expects int"),
        (["dataset=movielens"], "config key 'dataset'"),
        (["dataset=kuairand", "path=/no/such/folder"], "/no/such/folder"),
        (["--config", "nope"], "no config named 'nope'"),
    ],
)
def test_bad_input_exits_2_with_a_message(argv, needle, capsys) -> None:
    assert main(["data", "describe", *argv]) == 2
    assert needle in capsys.readouterr().err


def test_generate_then_load_by_path(tmp_path, capsys) -> None:
    out = tmp_path / "sim"
    assert main(["data", "generate", "--out", str(out), "sim.users=60", "sim.items=2000"]) == 0
    log = storage.load(out)
    assert yaml.safe_load((out / "config.yaml").read_text())["sim"]["users"] == 60
    assert main(["data", "generate", "--out", str(out), "sim.users=60"]) == 2  # no overwrite
    assert "exists" in capsys.readouterr().err
    capsys.readouterr()
    assert main(["data", "describe", "--json", f"path={out}"]) == 0
    assert json.loads(capsys.readouterr().out)["requests"] == log.n_requests
    np.testing.assert_array_equal(storage.load(out).req_time, log.req_time)


def test_sim_signals_writes_a_run_directory(tmp_path, capsys) -> None:
    argv = ["experiment", "sim-signals", f"out_dir={tmp_path}", "sim.users=300", "sim.items=3000"]
    assert main(argv) == 0
    (run,) = tmp_path.iterdir()
    assert run.name.endswith("-sim-signals")
    assert yaml.safe_load((run / "config.yaml").read_text())["sim"]["users"] == 300
    rep = json.loads((run / "report.json").read_text())
    assert set(rep) == {"ctr", "position", "activity", "behaviour", "personalization"}
    assert set(rep["personalization"]["by_bucket"]) == {"tail", "torso", "head"}
