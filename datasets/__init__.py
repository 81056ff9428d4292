"""Datasets: the rerank-request schema, the waterfall-feed simulator, real-data loaders,
per-user time splits and device partitions.

``load_dataset(cfg)`` builds the dataset a config names (registered in
``shoal.registry.DATASETS``).
"""

from __future__ import annotations

from pathlib import Path

from shoal.config import ShoalConfig
from shoal.datasets.requests import RequestLog
from shoal.registry import DATASETS

KUAIRAND_DIR = "kuairand-1k"


def _default_kuairand() -> Path:
    """The sample log shipped beside the repository (``../shared/data/kuairand-1k``)."""
    here = Path(__file__).resolve().parent
    tried = [p / "shared" / "data" / KUAIRAND_DIR for p in (here.parent.parent, Path.cwd().parent)]
    tried.append(Path.cwd() / "shared" / "data" / KUAIRAND_DIR)
    for p in tried:
        if p.is_dir():
            return p
    raise ValueError(
        "no KuaiRand data found; pass path=<folder with the log CSV> (looked in "
        + ", ".join(str(p) for p in tried)
        + ")"
    )


@DATASETS.register("sim")
def _sim(cfg: ShoalConfig) -> RequestLog:
    from shoal.datasets import storage
    from shoal.datasets.simulator import Simulator

    if cfg.path:
        return storage.load(cfg.path)
    seed = cfg.seed if cfg.data_seed is None else cfg.data_seed
    return Simulator(cfg.sim, seed).generate()


@DATASETS.register("kuairand")
def _kuairand(cfg: ShoalConfig) -> RequestLog:
    from shoal.datasets import storage
    from shoal.datasets.kuairand import load_kuairand

    path = Path(cfg.path) if cfg.path else _default_kuairand()
    if (path / "meta.json").is_file():
        return storage.load(path)
    return load_kuairand(path, cfg.kuairand)


def load_dataset(cfg: ShoalConfig) -> RequestLog:
    """The dataset ``cfg.dataset`` (generated, parsed, or read from a saved folder)."""
    return DATASETS.get(cfg.dataset)(cfg)
