"""Run directories: ``<out_dir>/<timestamp>-<name>/`` with the resolved config saved first."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from shoal.config import to_yaml
from shoal.datasets.storage import json_default


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
