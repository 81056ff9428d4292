"""EdgeRec Table 2 reproduction: the six EdgeRec models, several seeds, simulator and KuaiRand.

``shoal experiment edgerec-table2`` trains every model of the table with the same
configuration and tuning budget (``train.*`` and ``model.*`` apply to all of them) on identical
data (the simulator's data seed is fixed: ``data_seed``, default 0), with seeds
``seed .. seed + seeds - 1`` for model initialisation and batching, and writes
``results.jsonl`` (one line per dataset × model × seed, appended as runs finish, so a rerun
with the same ``--out`` skips finished runs), ``table.md`` and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from shoal.client.models import EDGEREC_VARIANTS
from shoal.config import ShoalConfig, to_yaml

PAPER_GAUC = {
    "dnn-rank": 0.6253,
    "dlcm": 0.6355,
    "crban-hubsm-ie": 0.6382,
    "crban-hubsm-ipv": 0.6404,
    "crban-huism": 0.6428,
    "crban-hubsm": 0.6483,
}
"""EdgeRec (CIKM 2020) Table 2, GAUC over requests on Taobao logs."""
PAPER_NAMES = {
    "dnn-rank": "DNN-rank",
    "dlcm": "DLCM",
    "crban-hubsm-ie": "CRBAN+HUBSM(IE)",
    "crban-hubsm-ipv": "CRBAN+HUBSM(IPV)",
    "crban-huism": "CRBAN+HUISM(IE&IPV)",
    "crban-hubsm": "CRBAN+HUBSM(IE&IPV)",
}
MODELS = tuple(EDGEREC_VARIANTS)
RECORDED = ("gauc", "uauc", "ndcg@10", "logloss")


def run_config(cfg: ShoalConfig, dataset: str, model: str, seed: int) -> ShoalConfig:
    """The config of one cell: same everything, only dataset, model name and seed differ."""
    data_seed = cfg.data_seed if cfg.data_seed is not None else 0
    return dataclasses.replace(
        cfg,
        dataset=dataset,
        seed=seed,
        data_seed=data_seed,
        model=dataclasses.replace(cfg.model, name=model),
    )


def _train_one(cfg: ShoalConfig, threads: int) -> dict[str, Any]:
    import torch

    from shoal.experiments.train import train

    if threads:
        torch.set_num_threads(threads)
    out = train(cfg, write=False)
    s = out.summary
    return {
        "dataset": cfg.dataset,
        "model": cfg.model.name,
        "seed": cfg.seed,
        "test": {m: out.test[m] for m in RECORDED},
        "best_epoch": s["fit"]["best_epoch"],
        "epochs": len(s["fit"]["history"]),
        "val_gauc": [h["val_gauc"] for h in s["fit"]["history"]],
        "fit_seconds": s["fit"]["seconds"],
        "device_bytes": s["device_bytes"],
        "requests": s["requests"],
    }


def _done(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    out: dict[tuple[str, str, int], dict[str, Any]] = {}
    if path.is_file():
        for i, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                out[(r["dataset"], r["model"], int(r["seed"]))] = r
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{i + 1} is not a result line: {e}") from e
    return out


def run(
    cfg: ShoalConfig,
    out: Path,
    datasets: Iterable[str] = ("sim", "kuairand"),
    seeds: int = 3,
    models: Iterable[str] = MODELS,
    workers: int = 1,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train every (dataset, model, seed) not yet in ``out/results.jsonl``; return all results.

    ``workers > 1`` trains in that many processes (spawned, one torch thread each unless
    ``train.threads`` says otherwise); results are identical to a serial run.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    path = out / "results.jsonl"
    done = _done(path)
    todo = [
        run_config(cfg, d, m, cfg.seed + k)
        for d in datasets
        for m in models
        for k in range(seeds)
        if (d, m, cfg.seed + k) not in done
    ]
    threads = cfg.train.threads or (1 if workers > 1 else 0)

    def record(r: dict[str, Any]) -> None:
        done[(r["dataset"], r["model"], r["seed"])] = r
        with path.open("a") as f:
            f.write(json.dumps(r) + "\n")
        if on_result is not None:
            on_result(r)

    if workers <= 1:
        for c in todo:
            record(_train_one(c, threads))
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_train_one, c, threads) for c in todo]
            for fut in futures:
                record(fut.result())
    return list(done.values())


def summarize(results: list[dict[str, Any]], metric: str = "gauc") -> dict[str, Any]:
    """Mean ± std of ``metric`` (overall) per dataset and model, and the ordering checks."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for d in sorted({r["dataset"] for r in results}):
        table[d] = {}
        for m in MODELS:
            v = [r["test"][metric]["all"] for r in results if r["dataset"] == d and r["model"] == m]
            if v:
                table[d][m] = {
                    "mean": float(np.mean(v)),
                    "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                    "n": len(v),
                }
    return {
        "metric": metric,
        "table": table,
        "ordering": {d: ordering(t) for d, t in table.items()},
    }


def ordering(t: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The paper's ordering claims checked on mean GAUC (None where a model is missing)."""

    def mean(m: str) -> float | None:
        return t[m]["mean"] if m in t else None

    dnn, dlcm, full = mean("dnn-rank"), mean("dlcm"), mean("crban-hubsm")
    crban = [m for m in MODELS[2:] if m in t]
    res: dict[str, Any] = {
        "dnn_rank_below_dlcm": None if dnn is None or dlcm is None else dnn < dlcm,
        "crban_above_dlcm": None
        if dlcm is None or not crban
        else {m: t[m]["mean"] > dlcm for m in crban},
        "full_best": None
        if full is None
        else all(full >= t[m]["mean"] for m in t if m != "crban-hubsm"),
        "full_vs_dlcm_relative": None if full is None or dlcm is None else full / dlcm - 1.0,
    }
    res["full_at_least_2pct_above_dlcm"] = (
        None if res["full_vs_dlcm_relative"] is None else res["full_vs_dlcm_relative"] >= 0.02
    )
    return res


def markdown(summary: dict[str, Any]) -> str:
    """The results table next to the paper's numbers."""
    datasets = list(summary["table"])
    head = "| # | model | paper (Taobao) | " + " | ".join(f"{d} GAUC" for d in datasets) + " |"
    lines = [head, "|" + "---|" * (3 + len(datasets))]
    for i, m in enumerate(MODELS, 1):
        cells = []
        for d in datasets:
            c = summary["table"][d].get(m)
            cells.append(f"{c['mean']:.4f} ± {c['std']:.4f}" if c else "—")
        lines.append(
            f"| {i} | {PAPER_NAMES[m]} | {PAPER_GAUC[m]:.4f} | " + " | ".join(cells) + " |"
        )
    n = {c["n"] for t in summary["table"].values() for c in t.values()}
    lines.append("")
    lines.append(f"Mean ± sample std over {', '.join(map(str, sorted(n)))} seeds.")
    for d, o in summary["ordering"].items():
        rel = o["full_vs_dlcm_relative"]
        rel_s = "—" if rel is None else f"{100 * rel:+.2f}%"
        lines.append(
            f"- {d}: DNN-rank < DLCM: {o['dnn_rank_below_dlcm']}; every CRBAN > DLCM: "
            f"{None if o['crban_above_dlcm'] is None else all(o['crban_above_dlcm'].values())}; "
            f"full model best: {o['full_best']}; full vs DLCM: {rel_s}."
        )
    return "\n".join(lines) + "\n"
