"""``shoal experiment privacy-utility``: what differential privacy costs in GAUC.

Runs, on identical simulated data (10,000 devices by default) and the same device schedule,
non-private FedAvg, DP-FedAvg (user-level, adaptive clipping) at several noise multipliers,
and FedAvg with on-device DP-SGD when the device side supports it, each in a fresh process.
Writes ``results.jsonl`` (one line per variant, resumable), ``table.md`` and
``privacy_utility.png`` (test GAUC against ε).
"""

from __future__ import annotations

import json
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BASE = [
    "sim.users=10000",
    "fed.rounds=30",
    "fed.fraction=0.02",
    "fed.eval_every=30",
    "fed.eval_fraction=0.2",
    "train.epochs=3",
    "train.max_requests=40000",
    "dp.adaptive=true",
]

VARIANTS: dict[str, list[str]] = {
    "cloud model (no training)": ["fed.strategy=cloud-only"],
    "FedAvg (no DP)": ["fed.strategy=fedavg"],
    "DP-FedAvg z=0.6": ["fed.strategy=fedavg-dp", "dp.noise_multiplier=0.6"],
    "DP-FedAvg z=1.0": ["fed.strategy=fedavg-dp", "dp.noise_multiplier=1.0"],
    "DP-FedAvg z=2.0": ["fed.strategy=fedavg-dp", "dp.noise_multiplier=2.0"],
    "FedAvg + on-device DP-SGD": ["fed.strategy=fedavg", "dp.local=true"],
}
BASELINE = "FedAvg (no DP)"
LOCAL_DELTA = 1e-5  # on-device DP-SGD's default δ (client/dp_sgd.py)


def _run_variant(label: str, overrides: list[str]) -> dict:
    from shoal.config import load_config
    from shoal.experiments.simulate import simulate

    cfg = load_config(overrides=overrides)
    run_dir, summary = simulate(cfg, progress=False)
    return {"label": label, "run_dir": str(run_dir), "summary": summary}


def run(out: Path, extra: list[str], variants: list[str] | None = None, on_result=None) -> list:
    """Run every variant not yet in ``out/results.jsonl``; returns all results."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done[r["label"]] = r
    names = variants or list(VARIANTS)
    unknown = set(names) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
    ctx = mp.get_context("spawn")
    for label in names:
        if label in done:
            continue
        overrides = [*BASE, *VARIANTS[label], f"out_dir={out / 'runs'}", *extra]
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:  # a fresh process: Ray is clean
            try:
                res = pool.submit(_run_variant, label, overrides).result()
            except Exception as e:  # a variant that cannot run is reported, not fatal
                res = {"label": label, "error": f"{type(e).__name__}: {e}"}
        with path.open("a") as f:
            f.write(json.dumps(res) + "\n")
        done[label] = res
        if on_result is not None:
            on_result(res)
    return [done[n] for n in names if n in done]


def _row(r: dict) -> dict:
    s = r.get("summary", {})
    priv = s.get("privacy", {})
    local = "epsilon" not in priv and "local_epsilon_max" in priv
    eps = priv.get("local_epsilon_max") if local else priv.get("epsilon")
    gauc = s.get("final", {}).get("gauc", {})
    return {
        "label": r["label"],
        "local": local,
        "epsilon": eps,
        "delta": LOCAL_DELTA if local else priv.get("delta"),
        "gauc": gauc.get("all"),
        "tail": gauc.get("tail"),
        "head": gauc.get("head"),
        "rounds": s.get("rounds"),
        "error": r.get("error"),
    }


def markdown(results: list[dict]) -> str:
    """The results table; relative GAUC change against non-private FedAvg."""
    rows = [_row(r) for r in results]
    base = next((x["gauc"] for x in rows if x["label"] == BASELINE), None)
    lines = [
        "| variant | ε | δ | GAUC | vs FedAvg | tail | head | rounds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        if x["error"]:
            lines.append(f"| {x['label']} | — | — | failed: {x['error'][:80]} | | | | |")
            continue
        rel = f"{(x['gauc'] / base - 1) * 100:+.2f}%" if base and x["gauc"] else "—"
        eps = "∞ (no DP)" if x["epsilon"] is None else f"{x['epsilon']:.3g}"
        if x["local"]:
            eps += " (per request, worst device)"
        delta = "—" if x["delta"] is None else f"{x['delta']:.0e}"
        lines.append(
            f"| {x['label']} | {eps} | {delta} | {x['gauc']:.4f} | {rel} | "
            f"{x['tail']:.4f} | {x['head']:.4f} | {x['rounds']} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    """Test GAUC against ε (log scale); non-private runs as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [_row(r) for r in results if not r.get("error")]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for x in rows:
        if x["epsilon"] is None:
            ax.axhline(
                x["gauc"],
                ls="--",
                lw=1,
                label=x["label"],
                color="gray" if "cloud" in x["label"] else "black",
            )
        else:
            ax.scatter([x["epsilon"]], [x["gauc"]], label=x["label"], zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("ε (δ = 1/#devices)")
    ax.set_ylabel("test GAUC")
    ax.set_title("privacy vs utility (10,000 simulated devices)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
