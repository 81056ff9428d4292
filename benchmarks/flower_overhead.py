"""Flower simulation overhead with and without ``shoal.server.fastsim.fast_simulation()``.

A trivial ClientApp echoes a float32 ArrayRecord (450 KB by default, the reranker's size), so
all time per round is runtime overhead. For each (registered nodes, messages per round) pair
and each mode (unpatched / patched) a fresh subprocess runs ``flwr.simulation.run_simulation``
(Ray backend, 2 actors) so Ray state never leaks between runs; a run past ``--timeout`` seconds
is killed with its process group and reported as ``"timeout"``. Prints one JSON object.

Per run:

- ``nodes_ready_s``: from the ``run_simulation`` call until all nodes are registered and the
  first round starts (Ray starts after that, during the first round);
- ``first_round_s``, ``round_s`` (every round) and ``steady_round_s`` (median of rounds after
  the first);
- ``startup_s``: ``nodes_ready_s + first_round_s - steady_round_s``, the fixed cost before the
  runtime reaches its steady pace (registration, Ray start-up, actor creation);
- ``ms_per_message``: ``steady_round_s / per_round`` in ms (the echo itself costs ~nothing);
- ``driver_peak_rss_mb`` and ``ray_peak_rss_mb``: peak RSS (VmHWM) of the driver and summed
  over its descendant processes (Ray's GCS, raylet and workers), read just before shutdown;
- ``total_s``: the whole subprocess, Ray shutdown included.

    python benchmarks/flower_overhead.py                          # the full grid (slow)
    python benchmarks/flower_overhead.py --nodes 1000 --per-round 100 --rounds 4
    python benchmarks/flower_overhead.py --nodes 100000 --per-round 1000 --mode patched
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time

RESULT_PREFIX = "FLOWER_OVERHEAD_RESULT "
PROGRESS_PREFIX = "FLOWER_OVERHEAD_PROGRESS "
BACKEND_CONFIG = {"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}}


def _proc_children() -> dict[int, list[int]]:
    """Map pid -> child pids, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of ``pid`` in MiB; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid``; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    """All descendant pids of ``pid`` (psutil when installed, else /proc)."""
    try:
        import psutil

        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except ImportError:
        pass
    children = _proc_children()
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _proc_name(pid: int) -> str:
    """Short name of ``pid`` (its first command-line words) and the pid."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return str(pid)
    name = " ".join(os.path.basename(w.decode()) for w in words[:2] if w)
    return f"{pid} {name}"


def _child(nodes: int, per_round: int, rounds: int, size_kb: float, patched: bool) -> dict:
    """Run one simulation in this process and return its measurements."""
    import logging

    import numpy as np
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from shoal.server.fastsim import fast_simulation

    logging.getLogger("flwr").setLevel(logging.ERROR)
    out: dict = {"nodes": nodes, "per_round": per_round, "patched": patched}
    client = ClientApp()

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        content = RecordDict(
            {
                "arrays": msg.content["arrays"],
                "metrics": MetricRecord({"partition-id": context.node_config["partition-id"]}),
            }
        )
        return Message(content, reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        while True:  # poll at <= 20% duty: get_node_ids() is O(nodes)
            t = time.perf_counter()
            node_ids = sorted(grid.get_node_ids())
            if len(node_ids) >= nodes:
                break
            time.sleep(max(0.02, 4 * (time.perf_counter() - t)))
        out["nodes_ready_s"] = time.perf_counter() - t0
        arrays = ArrayRecord([np.zeros(int(size_kb * 1024 / 4), dtype=np.float32)])
        rng = random.Random(0)
        round_s = []
        for _ in range(rounds):
            t = time.perf_counter()
            sampled = rng.sample(node_ids, per_round)
            msgs = [
                Message(RecordDict({"arrays": arrays}), dst_node_id=n, message_type="train")
                for n in sampled
            ]
            replies = list(grid.send_and_receive(msgs))
            round_s.append(time.perf_counter() - t)
            print(PROGRESS_PREFIX + json.dumps({"round_s": round_s}), flush=True)
            if sorted(r.metadata.src_node_id for r in replies) != sorted(sampled):
                out["error"] = f"round {len(round_s)}: {len(replies)} replies for {per_round}"
        out["round_s"] = round_s
        out["driver_peak_rss_mb"] = _peak_rss_mb(os.getpid())
        ray_pids = _descendants(os.getpid())
        out["ray_peak_rss_mb"] = sum(_peak_rss_mb(p) for p in ray_pids)
        out["driver_cpu_s"] = _cpu_s(os.getpid())
        out["ray_cpu_s"] = {_proc_name(p): round(_cpu_s(p), 2) for p in ray_pids if _cpu_s(p) > 0.5}

    t0 = time.perf_counter()
    if patched:
        with fast_simulation() as active:
            if not active:
                raise RuntimeError("fast_simulation() did not activate (unsupported flwr?)")
            run_simulation(server, client, num_supernodes=nodes, backend_config=BACKEND_CONFIG)
    else:
        run_simulation(server, client, num_supernodes=nodes, backend_config=BACKEND_CONFIG)
    out["total_s"] = time.perf_counter() - t0
    if "round_s" in out:
        rs = out["round_s"]
        steady = statistics.median(rs[1:]) if len(rs) > 1 else rs[0]
        out["first_round_s"] = rs[0]
        out["steady_round_s"] = steady
        out["startup_s"] = out["nodes_ready_s"] + rs[0] - steady
        out["ms_per_message"] = 1000 * steady / per_round
    return out


def _run_one(args: argparse.Namespace, nodes: int, per_round: int, patched: bool) -> dict:
    """Run one configuration in a subprocess (own process group) with a timeout."""
    spec = {
        "nodes": nodes,
        "per_round": per_round,
        "rounds": args.rounds,
        "size_kb": args.size_kb,
        "patched": patched,
    }
    timeout = args.timeout if patched else args.unpatched_timeout
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()
        done = [ln for ln in stdout.splitlines() if ln.startswith(PROGRESS_PREFIX)]
        progress = json.loads(done[-1][len(PROGRESS_PREFIX) :]) if done else {"round_s": []}
        return {**spec, "status": "timeout", "timeout_s": timeout, **progress}
    for line in stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return {**json.loads(line[len(RESULT_PREFIX) :]), "status": "ok"}
    return {**spec, "status": "failed", "returncode": proc.returncode, "stderr": stderr[-2000:]}


def main(argv: list[str] | None = None) -> None:
    """Parse the CLI, run the selected configurations and print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, nargs="+", default=[1000, 100000])
    p.add_argument("--per-round", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--size-kb", type=float, default=450.0)
    p.add_argument("--mode", choices=["both", "patched", "unpatched"], default="both")
    p.add_argument("--timeout", type=float, default=600.0, help="per patched run, seconds")
    p.add_argument("--unpatched-timeout", type=float, default=300.0, help="seconds")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(RESULT_PREFIX + json.dumps(_child(**spec)), flush=True)
        return
    if args.rounds < 2:
        raise ValueError(f"--rounds must be >= 2 (first round is start-up), got {args.rounds}")
    modes = {"both": [False, True], "patched": [True], "unpatched": [False]}[args.mode]
    runs = []
    for nodes in args.nodes:
        for per_round in args.per_round:
            if per_round > nodes:
                raise ValueError(f"--per-round {per_round} exceeds --nodes {nodes}")
            for patched in modes:
                runs.append(_run_one(args, nodes, per_round, patched))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"payload_kb": args.size_kb, "rounds": args.rounds, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
