"""End to end on Flower's simulation engine (Ray): every strategy, faults, personal state,
determinism. Each test starts its own simulation on a tiny configuration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _fed_helpers import tiny_cfg
from flwr.app import MessageType

import shoal.strategies  # noqa: F401
from shoal.client.app import make_client_app
from shoal.client.faults import FaultInjector, ReplyTap
from shoal.experiments.simulate import simulate
from shoal.registry import STRATEGIES
from shoal.server.outputs import read_metrics


def values(run_dir, metric, bucket="all") -> dict[int, float]:
    return {
        r["round"]: r["value"]
        for r in read_metrics(run_dir)
        if r["metric"] == metric and r["bucket"] == bucket
    }


@pytest.mark.parametrize("strategy", STRATEGIES.names())
def test_every_strategy_runs_end_to_end(tmp_path, strategy) -> None:
    run_dir, summary = simulate(tiny_cfg(tmp_path, f"fed.strategy={strategy}"), progress=False)
    for f in ("config.yaml", "metrics.csv", "summary.json", "model.pt", "checkpoint.pt"):
        assert (run_dir / f).is_file(), f
    assert (run_dir / "plots" / "gauc.png").is_file()
    gauc = values(run_dir, "gauc")
    assert sorted(gauc) == [1, 2] and all(0.0 < v < 1.0 for v in gauc.values())
    assert summary["final"]["gauc"]["all"] == pytest.approx(gauc[2])
    assert set(summary["final"]["gauc"]) == {"all", "tail", "torso", "head"}
    up, down = values(run_dir, "bytes_up"), values(run_dir, "bytes_down")
    assert values(run_dir, "failures").get(1, 0) == 0
    n_eval = values(run_dir, "eval_devices")[1]
    model_bytes = summary["device_bytes"]
    assert down[1] >= n_eval * model_bytes  # every evaluated device got the model
    cls = STRATEGIES.get(strategy)
    if cls.train_task is not None and cls.returns_arrays:
        assert up[1] > 0 and up[1] % values(run_dir, "replied")[1] == 0
    else:  # nothing but metrics leaves a device
        assert up[1] == 0
    assert values(run_dir, "failed_round") == {}  # not even where no device trains


def test_faulty_devices_are_excluded_counted_and_the_round_goes_on(tmp_path) -> None:
    faults = {
        "raise": [0],
        "nan": [1],
        "shape": [2],
        "extra_key": [3],
        "missing_key": [4],
        "no_metrics": [5],
        "sleep": [6],
    }
    # round 1 runs clean (and warms the actors up); the faults happen in round 2
    # (the timeout leaves round 1 room for actor start-up on a loaded 2-core machine)
    app = make_client_app([FaultInjector(faults, sleep_s=35.0, rounds=[2])])
    cfg = tiny_cfg(tmp_path, "fed.fraction=1.0", "fed.timeout=30")
    run_dir, _ = simulate(cfg, client_app=app, progress=False)
    assert values(run_dir, "failures") == {1: 0.0, 2: 7.0}
    assert values(run_dir, "replied")[2] == values(run_dir, "sampled")[2] - 7
    assert "failed_round" not in {r["metric"] for r in read_metrics(run_dir)}
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ck["arrays"].values())


def _fail_evaluation(msg, context, call_next):
    """Mod: every evaluation fails on the device (as a model the device cannot load)."""
    if msg.metadata.message_type == MessageType.EVALUATE:
        raise RuntimeError("injected evaluation failure")
    return call_next(msg, context)


def test_run_whose_final_evaluation_failed_everywhere_is_not_done(tmp_path) -> None:
    app = make_client_app([_fail_evaluation])
    cfg = tiny_cfg(tmp_path, "fed.strategy=cloud-only", "fed.rounds=1")
    with pytest.raises(ValueError, match="every device failed the final evaluation"):
        simulate(cfg, client_app=app, progress=False)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.name.endswith("cloud-only-sim")]
    assert (run_dir / "metrics.csv").is_file() and (run_dir / "model.pt").is_file()
    assert not (run_dir / "summary.json").exists()  # compare will not count it as done


def test_personal_parameters_never_leave_the_device(tmp_path) -> None:
    tap = tmp_path / "tap"
    app = make_client_app([ReplyTap(tap)])
    cfg = tiny_cfg(tmp_path, "fed.strategy=local-only", "fed.fraction=1.0")
    run_dir, _ = simulate(cfg, client_app=app, progress=False)
    replies = [json.loads(p.read_text()) for p in tap.iterdir()]
    assert {r["type"] for r in replies} == {"train", "evaluate"}
    assert all(r["arrays"] == {} for r in replies), "a reply carried arrays"
    stored = list((run_dir / "store" / "personal").rglob("*.pt"))
    trained = {int(p.name.split(".")[0]) for p in stored}
    assert trained and trained <= {r["device"] for r in replies if r["type"] == "train"}


def test_same_seed_same_final_metrics(tmp_path) -> None:
    a_dir, a = simulate(tiny_cfg(tmp_path / "a"), progress=False)
    b_dir, b = simulate(tiny_cfg(tmp_path / "b"), progress=False)
    for m, per in a["final"].items():
        for bucket, v in per.items():
            w = b["final"][m][bucket]
            assert (np.isnan(v) and np.isnan(w)) or v == pytest.approx(w, rel=1e-6, abs=1e-9)
    ma = torch.load(a_dir / "model.pt", weights_only=True)["state_dict"]
    mb = torch.load(b_dir / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(ma[k], mb[k], atol=1e-6) for k in ma)


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from _fed_helpers import tiny_cfg
from shoal.client.app import make_client_app
from shoal.client.faults import FaultInjector
from shoal.experiments.simulate import simulate
# every device hangs in round 3, so the run is inside round 3 when it is killed
app = make_client_app([FaultInjector({{"sleep": list(range(100))}}, sleep_s=600, rounds=[3])])
simulate(tiny_cfg({out!r}, "fed.rounds=4", "fed.timeout=600"), client_app=app, progress=False)
"""


def test_killed_run_resumes_to_the_uninterrupted_model(tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from shoal.config import load_config

    full_dir, _ = simulate(tiny_cfg(tmp_path / "full", "fed.rounds=4"), progress=False)
    out = tmp_path / "killed"
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            runs = list(out.glob("*-fedavg-sim"))
            if runs and (runs[0] / "checkpoint.pt").is_file():
                if torch.load(runs[0] / "checkpoint.pt", weights_only=True)["round"] == 2:
                    break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.2)
        else:
            pytest.fail("round 2 never completed")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed_dir = runs[0]
    assert not (killed_dir / "model.pt").exists()
    cfg = load_config(overrides=[f"fed.resume={killed_dir}"])
    _, summary = simulate(cfg, progress=False)
    assert summary["rounds"] == 4
    assert sorted(values(killed_dir, "gauc")) == [1, 2, 3, 4]  # each round written once
    a = torch.load(full_dir / "model.pt", weights_only=True)["state_dict"]
    b = torch.load(killed_dir / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


KUAIRAND = [
    "dataset=kuairand",
    f"path={Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'kuairand-1k'}",
    "fed.devices=60",
]


@pytest.mark.parametrize(
    "strategy",
    [
        "fedavg-finetune",
        *(
            pytest.param(s, marks=pytest.mark.slow)
            for s in STRATEGIES.names()
            if s != "fedavg-finetune"
        ),
    ],
)
def test_strategies_run_on_kuairand(tmp_path, strategy) -> None:
    cfg = tiny_cfg(tmp_path, *KUAIRAND, f"fed.strategy={strategy}", "fed.rounds=1")
    run_dir, summary = simulate(cfg, progress=False)
    assert summary["dataset"] == "kuairand" and summary["devices"] == 60
    assert 0.0 < summary["final"]["gauc"]["all"] < 1.0
    assert summary["final"]["users"]["all"] <= 60
    assert values(run_dir, "failures") == {1: 0.0}
