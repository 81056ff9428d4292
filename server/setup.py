"""Run directories of federated runs, the shared dataset cache and cloud-side initial models.

A federated run directory holds ``config.yaml`` (the resolved config), ``run.json`` (the
dataset folder, the number of devices) and, as the run goes, the outputs of
:mod:`shoal.server.outputs`. The dataset is materialized once per data configuration under
``<out_dir>/.datasets/<fingerprint>/`` and memory-mapped by every device, so runs and
strategies on identical data share one copy. Initial models (the cloud model trained on cloud
history, the pooled centralized model) are cached there too, keyed by what they depend on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from shoal.client.checkpoint import load_reranker, save_reranker
from shoal.client.device import RUN_FILE
from shoal.client.models import build_model
from shoal.client.models.reranker import Reranker, score_stats
from shoal.client.training import SeqLens
from shoal.config import ShoalConfig, load_config
from shoal.datasets import load_dataset, storage
from shoal.datasets.requests import RequestLog
from shoal.datasets.splits import CLOUD, assign_splits
from shoal.runs import make_run_dir, write_json
from shoal.server.training import fit, make_splits, validation_split

INITS = ("cloud", "pooled", "random")


def _digest(obj: object) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_fingerprint(cfg: ShoalConfig) -> str:
    """Hash of everything the dataset depends on."""
    d: dict[str, object] = {"dataset": cfg.dataset, "path": cfg.path}
    d["source"] = dataclasses.asdict(cfg.sim if cfg.dataset == "sim" else cfg.kuairand)
    if cfg.dataset == "sim" and cfg.path is None:  # only simulated data depends on a seed
        d["seed"] = cfg.seed if cfg.data_seed is None else cfg.data_seed
    return _digest(d)


def dataset_dir(cfg: ShoalConfig) -> Path:
    """The dataset folder of ``cfg`` in the shared cache, built on first use."""
    path = Path(cfg.out_dir) / ".datasets" / data_fingerprint(cfg)
    if not (path / "meta.json").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        storage.save(load_dataset(cfg), path, overwrite=path.exists())
    return path


def num_devices(cfg: ShoalConfig, log: RequestLog) -> int:
    """Devices of the run: users with data, capped by ``fed.devices`` when positive."""
    have = int(np.count_nonzero(np.bincount(log.req_user, minlength=log.n_users)))
    return min(have, cfg.fed.devices) if cfg.fed.devices else have


def prepare_run(cfg: ShoalConfig) -> Path:
    """Fresh run directory for ``cfg`` with ``config.yaml`` and ``run.json``."""
    if cfg.dataset == "sim" and cfg.fed.devices and cfg.path is None:
        cfg = dataclasses.replace(cfg, sim=dataclasses.replace(cfg.sim, users=cfg.fed.devices))
    data = dataset_dir(cfg).resolve()
    log = storage.load(data, mmap=True)
    run_dir = make_run_dir(cfg, f"{cfg.fed.strategy}-{cfg.dataset}").resolve()
    write_json(run_dir / RUN_FILE, {"data_dir": str(data), "devices": num_devices(cfg, log)})
    return run_dir


def open_run_dir(run_dir: str | Path) -> tuple[ShoalConfig, dict]:
    """Config and ``run.json`` of an existing run directory (for resume)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / RUN_FILE).is_file():
        raise ValueError(f"{run_dir} is not a Shoal federated run directory")
    return load_config(files=[run_dir / "config.yaml"]), json.loads(
        (run_dir / RUN_FILE).read_text()
    )


def _init_key(kind: str, cfg: ShoalConfig, layout: dict[str, list[int]]) -> str:
    """Cache key of an initial model: everything it was trained from, and the parameter
    layout (names and shapes) of the code that builds it, so a model cached by an older
    version of a network is retrained, not loaded into the wrong parameters."""
    deps = {"kind": kind, "model": dataclasses.asdict(cfg.model), "seed": cfg.seed}
    deps["layout"] = layout
    deps["split"] = dataclasses.asdict(cfg.split)
    deps["seq"] = dataclasses.asdict(cfg.seq)
    if kind != "random":
        deps["train"] = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k != "device"}
    return _digest(deps)


def initial_model(kind: str, cfg: ShoalConfig, data_dir: str | Path) -> Reranker:
    """The model a strategy starts from, trained or loaded from the dataset's cache.

    ``cloud``: trained on every user's cloud history (what today's cloud ranker knows);
    ``pooled``: trained on cloud history and device-fresh data pooled (the centralized upper
    bound, as ``shoal train``); ``random``: initialized from the seed, with the candidate
    score statistics of the cloud history.
    """
    if kind not in INITS:
        raise ValueError(f"unknown initial model {kind!r}; known: {INITS}")
    data_dir = Path(data_dir)
    log = storage.load(data_dir, mmap=True)
    template = build_model(cfg.model, log.schema, log.n_items)
    layout = {k: list(v.shape) for k, v in template.state_dict().items()}
    path = data_dir / "models" / f"{kind}-{_init_key(kind, cfg, layout)}.pt"
    if path.is_file():
        model, _ = load_reranker(path, log.schema)
        return model
    seq = SeqLens(cfg.seq.ie_len, cfg.seq.ipv_len)
    rng = np.random.default_rng([cfg.seed, 33])
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, log.schema, log.n_items)
    split = assign_splits(log, cfg.split)
    cloud = np.flatnonzero(split == CLOUD)
    if kind == "random":
        model.device.set_score_stats(*score_stats(log.batch(cloud[:4096], 1, 1)))
    else:
        if kind == "cloud":
            train, val = validation_split(log, cloud, cfg.train.val_fraction, rng)
        else:
            train, val, _ = make_splits(log, cfg.split, cfg.train, cfg.seed)
        fit(model, log, train, val, cfg.train, seq, rng)
    model.cpu().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_reranker(model, cfg.model, log.schema, log.n_items, path)
    return model
