"""On-device inference latency and size: ONNX Runtime vs PyTorch eager, one thread.

One request of ``K`` candidates with IE and IPV sequences of ``m`` and ``n`` behaviours, on the
simulator's schema (``docs/deployment.md``). For every model: the full forward (``device.onnx``);
for the EdgeRec family also the rerank from stored encodings (``rerank.onnx``) and one
incremental behaviour update per HUBSM branch (``ie_step.onnx`` / ``ipv_step.onnx``). Each
figure is warmed up, then timed over ``--iters`` calls with ``time.perf_counter_ns``; p50, p99
and mean are in milliseconds. The goals of the issue are printed next to the first model's
numbers with a ``meets_goal`` flag (not asserted).

    python benchmarks/inference.py                       # crban-hubsm, dnn-rank, kuaishou
    python benchmarks/inference.py --models crban-hubsm --iters 5000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from shoal.client.export import (
    OPTIMIZATION_LEVELS,
    RERANK_INPUT_NAMES,
    export_device,
    onnx_session,
    random_inputs,
    rerank_inputs,
)
from shoal.client.models import INPUT_NAMES, EdgeRecNet, build_model
from shoal.config import ModelConfig, SimConfig
from shoal.datasets.simulator import sim_schema

GOALS = {
    "rerank_ort_p50_ms": 0.2,
    "step_ort_p50_ms": 0.05,
    "device_bytes": 1_000_000,
}
"""Targets of the issue: rerank ≤ 0.2 ms p50 in ORT, ≤ 0.05 ms per incremental update,
device network ≤ 1 MB (parameters + buffers, float32)."""


def timeit(fn: Callable[[], object], iters: int, warmup: int) -> dict[str, float]:
    """p50 / p99 / mean milliseconds of ``fn()`` over ``iters`` timed calls."""
    for _ in range(warmup):
        fn()
    ns = np.empty(iters, dtype=np.int64)
    for i in range(iters):
        t0 = time.perf_counter_ns()
        fn()
        ns[i] = time.perf_counter_ns() - t0
    ms = ns / 1e6
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "iters": iters,
    }


def time_ort(path: Path, named: dict[str, torch.Tensor], level: str, run: dict) -> dict:
    """Latency of one ONNX graph on one intra-op thread; inputs prepared outside the loop."""
    sess = onnx_session(path, threads=1, optimization=level)
    feed = {i.name: named[i.name].numpy() for i in sess.get_inputs()}  # the inputs it kept
    return timeit(lambda: sess.run(None, feed), **run)


def step_inputs(enc, seed: int) -> dict[str, torch.Tensor]:
    """One behaviour for a HUBSM encoder: emb (1, D), act (1, A), state (2, L, 1, H)."""
    g = torch.Generator().manual_seed(seed)
    act = [torch.randint(1, t.num_embeddings, (1,), generator=g) for t in enc.actions.tables]
    return {
        "emb": torch.randn(1, enc.item_gru.input_size, generator=g),
        "act": torch.stack(act, dim=-1),
        "state": torch.randn(2, enc.layers, 1, enc.hidden, generator=g),
    }


def bench_model(name: str, args: argparse.Namespace, out_dir: Path) -> dict:
    sim = SimConfig()
    schema = sim_schema(sim)
    torch.manual_seed(args.seed)
    model = build_model(ModelConfig(name=name), schema, sim.items).eval()
    net = model.device
    paths = export_device(net, out_dir / name)
    x = random_inputs(net, 1, args.K, args.m, args.n, torch.Generator().manual_seed(args.seed))
    run = {"iters": args.iters, "warmup": args.warmup}
    res: dict = {
        "model": name,
        "device_bytes": net.size_bytes(),
        "cloud_bytes": sum(p.numel() * p.element_size() for p in model.cloud.parameters()),
        "onnx_bytes": {k: p.stat().st_size for k, p in paths.items()},
        "latency": {},
    }
    lat = res["latency"]

    def ort_and_eager(key: str, path: Path, named: dict, eager: Callable[[], object]) -> None:
        lat[f"{key}_ort"] = time_ort(path, named, args.optimization, run)
        with torch.inference_mode():
            lat[f"{key}_eager"] = timeit(eager, **run)

    ort_and_eager("full", paths["device"], dict(zip(INPUT_NAMES, x)), lambda: net(*x))
    if isinstance(net, EdgeRecNet):
        rx = rerank_inputs(net, x)
        rerank_args = tuple(
            None if k.endswith("_enc") and getattr(net, k[: -len("_enc")]) is None else t
            for k, t in zip(RERANK_INPUT_NAMES, rx)
        )
        ort_and_eager(
            "rerank",
            paths["rerank"],
            dict(zip(RERANK_INPUT_NAMES, rx)),
            lambda: net.rerank(*rerank_args),
        )
        for kind in ("ie", "ipv"):
            if f"{kind}_step" not in paths:
                continue
            enc = getattr(net, kind).encoder
            s_in = step_inputs(enc, args.seed)
            ort_and_eager(
                f"{kind}_step",
                paths[f"{kind}_step"],
                s_in,
                lambda enc=enc, s=s_in: enc.step(s["emb"], s["act"], s["state"]),
            )
    if args.sweep:
        sweep = {}
        for graph in ("device", "rerank"):
            if graph not in paths:
                continue
            named = dict(zip(INPUT_NAMES, x))
            if graph == "rerank":
                named = dict(zip(RERANK_INPUT_NAMES, rerank_inputs(net, x)))
            for level in OPTIMIZATION_LEVELS:
                sweep[f"{graph}/{level}"] = time_ort(paths[graph], named, level, run)["p50_ms"]
        res["ort_optimization_p50_ms"] = sweep
    return res


def goals(res: dict) -> list[dict]:
    """The issue's goals next to the measured numbers of one model."""
    lat = res["latency"]
    steps = [lat[k]["p50_ms"] for k in ("ie_step_ort", "ipv_step_ort") if k in lat]
    rows = [
        ("rerank_ort_p50_ms", lat.get("rerank_ort", {}).get("p50_ms")),
        ("step_ort_p50_ms", max(steps) if steps else None),
        ("device_bytes", res["device_bytes"]),
    ]
    return [
        {
            "figure": k,
            "goal": GOALS[k],
            "measured": v,
            "meets_goal": None if v is None else bool(v <= GOALS[k]),
        }
        for k, v in rows
    ]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["crban-hubsm", "dnn-rank", "kuaishou"])
    ap.add_argument("--K", type=int, default=100, help="candidates per request")
    ap.add_argument("--m", type=int, default=50, help="IE behaviours")
    ap.add_argument("--n", type=int, default=20, help="IPV behaviours")
    ap.add_argument("--iters", type=int, default=2000, help="timed calls per figure (>= 1000)")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--optimization", default="all", choices=list(OPTIMIZATION_LEVELS))
    ap.add_argument(
        "--no-sweep",
        dest="sweep",
        action="store_false",
        help="skip the ORT optimization-level sweep of the first model",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=None, help="keep the ONNX files here")
    a = ap.parse_args()
    if a.iters < 1000:
        ap.error("--iters must be >= 1000")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = a.out_dir if a.out_dir is not None else Path(tmp)
        results = []
        for i, name in enumerate(a.models):
            a_i = argparse.Namespace(**{**vars(a), "sweep": a.sweep and i == 0})
            results.append(bench_model(name, a_i, out_dir))
    print(
        json.dumps(
            {
                "benchmark": "inference",
                "request": {"K": a.K, "ie_len": a.m, "ipv_len": a.n, "batch": 1},
                "threads": {"torch": torch.get_num_threads(), "ort_intra_op": 1},
                "ort_optimization": a.optimization,
                "machine": {"cpu": _cpu(), "cores": os.cpu_count()},
                "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
                "goals": {"model": results[0]["model"], "rows": goals(results[0])},
                "results": results,
                "seconds": time.perf_counter() - t0,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
