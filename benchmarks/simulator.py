"""Simulator throughput and memory: rerank requests generated per second and peak RSS.

Each population size runs in a fresh subprocess so its peak RSS is its own. The baseline in the
same run is the peak RSS of a process that only imports Shoal and numpy (what every run pays),
and the log's own array bytes (what the data needs); the generator's overhead is the rest.

    python benchmarks/simulator.py                  # 10k and 100k users
    python benchmarks/simulator.py --users 2000 10000
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _child(users: int, seed: int) -> dict:
    from shoal.config import load_config
    from shoal.datasets.simulator import Simulator

    cfg = load_config(overrides=[f"sim.users={users}", f"sim.items={max(20000, users)}"])
    t0 = time.perf_counter()
    sim = Simulator(cfg.sim, seed)
    t1 = time.perf_counter()
    log = sim.generate()
    t2 = time.perf_counter()
    return {
        "users": users,
        "requests": log.n_requests,
        "exposures": int(log.ie_item.size),
        "world_s": t1 - t0,
        "generate_s": t2 - t1,
        "requests_per_s": log.n_requests / (t2 - t1),
        "log_mb": log.nbytes() / 2**20,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _baseline() -> dict:
    import numpy  # noqa: F401

    import shoal.datasets.simulator  # noqa: F401

    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run(args: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.baseline:
        print(json.dumps(_baseline()))
        return
    if a.child is not None:
        print(json.dumps(_child(a.child, a.seed)))
        return
    base = _run(["--baseline"])
    results = []
    for u in a.users:
        r = _run(["--child", str(u), "--seed", str(a.seed)])
        r["rss_over_baseline_mb"] = r["peak_rss_mb"] - base["peak_rss_mb"]
        r["rss_over_log_ratio"] = r["rss_over_baseline_mb"] / max(r["log_mb"], 1e-9)
        results.append(r)
    print(
        json.dumps(
            {
                "benchmark": "simulator",
                "baseline_import_rss_mb": base["peak_rss_mb"],
                "results": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
