"""Run directories: ``<out_dir>/<timestamp>-<name>/`` with the resolved config saved first.

Core so that the server (``flwr run``) and the experiment runners share it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from shoal.config import to_yaml


def make_run_dir(cfg: Any, name: str, out_dir: str | Path | None = None) -> Path:
    """Create a fresh run directory and write ``config.yaml`` (the resolved config) into it."""
    root = Path(out_dir if out_dir is not None else cfg.out_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = root / f"{stamp}-{name}"
    k = 1
    while path.exists():
        k += 1
        path = root / f"{stamp}-{name}-{k}"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(to_yaml(cfg))
    return path


def write_json(path: Path, obj: Any) -> None:
    """JSON with numpy scalars and arrays converted."""
    path.write_text(json.dumps(obj, indent=1, default=json_default))


def json_default(o: object) -> object:
    """``json.dumps`` default for numpy scalars, arrays and paths."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
