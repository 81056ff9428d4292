"""Federated rounds on Flower's simulation engine vs the same local updates in a plain loop.

For each scenario (registered devices, devices per round) it runs, in a fresh subprocess,

* ``shoal simulate`` (fedavg, default reranker, ``rounds`` training rounds, one ClientApp
  actor per core) and reads each round's ``train_seconds`` from ``metrics.csv``;
* the baseline: the same devices' ``fit`` tasks called one after another in one process
  (``shoal.client.app.handle``, exactly what the ClientApp runs, no Flower, no Ray);

and prints one JSON object: wall time per round (median of the rounds after the first,
which includes actor start-up), device updates per second, the ratio of the two, the ratio
to the ideal parallel loop (plain loop time / actors), start-up seconds, and peak memory of
the whole process tree (RSS summed, and PSS, which counts shared pages once).

The model starts from ``fed.init=random`` (speed does not depend on accuracy, and training
a cloud model on 100,000 users would dominate the run). Usage::

    python benchmarks/federation.py                       # 100 and 1000 per round, 100k
    python benchmarks/federation.py --scenarios 2000:100  # registered:per-round
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SCENARIOS = ("2000:100", "2000:1000", "100000:1000")


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _mem_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


class PeakMemory:
    """Samples the process tree of ``pid`` every ``every`` seconds; keeps the peak sums."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        self.pid, self.every = pid, every
        self.rss = self.pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            mem = [_mem_kb(p) for p in _tree(self.pid)]
            self.rss = max(self.rss, sum(m[0] for m in mem))
            self.pss = max(self.pss, sum(m[1] for m in mem))
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def overrides(users: int, frac: float, rounds: int, out: str) -> list[str]:
    return [
        f"sim.users={users}",
        f"fed.fraction={frac}",
        f"fed.rounds={rounds}",
        f"fed.eval_every={rounds + 1}",
        "fed.eval_fraction=0.01",
        "fed.init=random",
        f"out_dir={out}",
    ]


def run_simulation_child(users: int, per_round: int, rounds: int, out: str) -> dict:
    """In the child process: prepare data, then time the simulation."""
    from shoal.config import load_config
    from shoal.datasets import storage
    from shoal.experiments.simulate import simulate
    from shoal.server.outputs import read_metrics
    from shoal.server.setup import dataset_dir, num_devices

    cfg = load_config(overrides=overrides(users, 1.0, rounds, out))
    log = storage.load(dataset_dir(cfg), mmap=True)  # data generation is not federation time
    frac = min(1.0, per_round / num_devices(cfg, log))
    cfg = load_config(overrides=overrides(users, frac, rounds, out))
    t0 = time.perf_counter()
    run_dir, summary = simulate(cfg, progress=False)
    total = time.perf_counter() - t0
    rows = read_metrics(run_dir)
    train = {r["round"]: r["value"] for r in rows if r["metric"] == "train_seconds"}
    sampled = {r["round"]: r["value"] for r in rows if r["metric"] == "sampled"}
    return {
        "run_dir": str(run_dir),
        "total_seconds": total,
        "train_seconds": train,
        "sampled": sampled,
        "round_seconds_sum": summary["totals"]["round_seconds"],
    }


def run_loop_child(run_dir: str, rounds: int) -> dict:
    """In the child process: the same fit tasks, one after another, no Flower."""
    import torch
    from flwr.app import ArrayRecord

    from shoal.client.local import run_task
    from shoal.server.setup import initial_model, open_run_dir
    from shoal.strategies.sampling import sample_devices

    cfg, meta = open_run_dir(run_dir)
    torch.set_num_threads(cfg.train.threads)
    model = initial_model("random", cfg, meta["data_dir"])
    arrays = ArrayRecord({k: v.detach() for k, v in model.state_dict().items()})
    times = {}
    for rnd in range(1, rounds + 1):
        devices = sample_devices(meta["devices"], cfg.fed.fraction, cfg.seed, rnd)
        t0 = time.perf_counter()
        for d in devices:
            run_task(run_dir, "fit", rnd, arrays, int(d))
        times[rnd] = time.perf_counter() - t0
    return {"loop_seconds": times}


def child(args: argparse.Namespace) -> None:
    if args.mode == "sim":
        users, per_round = (int(x) for x in args.scenario.split(":"))
        out = run_simulation_child(users, per_round, args.rounds, args.out)
    else:
        out = run_loop_child(args.run_dir, args.rounds)
    print("RESULT " + json.dumps(out), flush=True)


def spawn(argv: list[str], timeout: float) -> tuple[dict, dict]:
    proc = subprocess.Popen(
        [sys.executable, __file__, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    with PeakMemory(proc.pid) as mem:
        try:
            stdout, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return {"error": f"timeout after {timeout} s"}, {}
    line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        return {"error": f"exit {proc.returncode}"}, {}
    return json.loads(line[7:]), {"peak_rss_gib": mem.rss / 2**20, "peak_pss_gib": mem.pss / 2**20}


def scenario(spec: str, rounds: int, out: str, timeout: float) -> dict:
    users, per_round = (int(x) for x in spec.split(":"))
    sim, mem = spawn(
        ["--child", "sim", "--scenario", spec, "--rounds", str(rounds), "--out", out], timeout
    )
    if "error" in sim:
        return {"registered": users, "per_round": per_round, **sim}
    loop, _ = spawn(
        ["--child", "loop", "--run-dir", sim["run_dir"], "--rounds", str(rounds)], timeout
    )
    steady = [r for r in range(2, rounds + 1)]
    fed = statistics.median(sim["train_seconds"][str(r)] for r in steady)
    base = statistics.median(loop["loop_seconds"][str(r)] for r in steady)
    actors = os.cpu_count() or 1
    n = statistics.median(sim["sampled"][str(r)] for r in steady)
    return {
        "registered": users,
        "per_round": int(n),
        "round_seconds": fed,
        "updates_per_second": n / fed,
        "plain_loop_seconds": base,
        "ratio_to_plain_loop": fed / base,
        "ratio_to_ideal_parallel": fed / (base / actors),
        "actors": actors,
        "first_round_seconds": sim["train_seconds"]["1"],
        "simulation_total_seconds": sim["total_seconds"],
        **mem,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="registered:per-round,...")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default="", help="where runs and the dataset cache go")
    p.add_argument("--child", choices=("sim", "loop"), dest="mode")
    p.add_argument("--scenario")
    p.add_argument("--run-dir")
    args = p.parse_args()
    if args.mode:
        return child(args)
    out = args.out or tempfile.mkdtemp(prefix="shoal-bench-")
    results = [scenario(s, args.rounds, out, args.timeout) for s in args.scenarios.split(",")]
    print(
        json.dumps({"benchmark": "federation", "rounds": args.rounds, "results": results}, indent=1)
    )


if __name__ == "__main__":
    main()
