"""One device's ``fit`` task with and without on-device DP-SGD (``dp.local``).

Default model and local settings on the default simulator; devices with about the mean, the
90th percentile and the most device-fresh requests among those that have any. Runs each task
in-process (``shoal.client.local.run_task``, what a ClientApp actor runs) on one thread (one
actor = one core), after a warm-up, and prints one JSON object with the median seconds per
update and the slowdown. Usage::

    python benchmarks/local_dp.py [--users 300] [--reps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import numpy as np
import torch
from flwr.app import ArrayRecord

from shoal.client.device import open_run
from shoal.client.local import run_task
from shoal.config import load_config
from shoal.server.setup import initial_model, open_run_dir, prepare_run


def seconds(run_dir, arrays, device: int, reps: int) -> float:
    run_task(run_dir, "fit", 1, arrays, device)  # warm-up (imports, caches)
    out = []
    for i in range(reps):
        t = time.perf_counter()
        reply = run_task(run_dir, "fit", 2 + i, arrays, device)
        out.append(time.perf_counter() - t)
        if reply.has_error():
            raise RuntimeError(reply.error.reason)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=300)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as out:
        base = [f"sim.users={args.users}", f"out_dir={out}", "fed.init=random"]
        plain = prepare_run(load_config(overrides=base))
        private = prepare_run(load_config(overrides=[*base, "dp.local=true"]))
        cfg, meta = open_run_dir(plain)
        model = initial_model("random", cfg, meta["data_dir"])
        arrays = ArrayRecord({k: v.detach().clone() for k, v in model.state_dict().items()})
        r = open_run(plain)
        n = np.array([r.requests(d, "device").size for d in range(r.parts.num_partitions)])
        has = np.flatnonzero(n)
        picks = {
            "mean": int(has[np.argmin(np.abs(n[has] - n[has].mean()))]),
            "p90": int(has[np.argmin(np.abs(n[has] - np.percentile(n[has], 90)))]),
            "max": int(has[np.argmax(n[has])]),
        }
        rows = {}
        for name, d in picks.items():
            a, b = seconds(plain, arrays, d, args.reps), seconds(private, arrays, d, args.reps)
            rows[name] = {
                "device": d,
                "requests": int(n[d]),
                "plain_s": round(a, 3),
                "dp_s": round(b, 3),
                "slowdown": round(b / a, 2),
            }
        print(json.dumps({"model": cfg.model.name, "local_batch": cfg.fed.local_batch, **rows}))


if __name__ == "__main__":
    main()
