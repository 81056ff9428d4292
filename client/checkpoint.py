"""Saving and loading a trained reranker (``model.pt`` of a run directory).

The file holds the model name and config, the dataset schema and catalog size it was built
for, and the weights, under a format tag and version; loading checks all of them, so a
checkpoint of another format, version or dataset fails with a message that says which.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from shoal.client.models import build_model
from shoal.client.models.reranker import Reranker
from shoal.config import ModelConfig
from shoal.datasets.schema import Schema

FORMAT = "shoal-reranker"
VERSION = 1


def save_reranker(model: Reranker, mcfg: ModelConfig, schema: Schema, n_items: int, path) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    blob = {
        "format": FORMAT,
        "version": VERSION,
        "name": model.name,
        "model_config": dataclasses.asdict(mcfg),
        "schema": schema.to_dict(),
        "n_items": int(n_items),
        "device_bytes": model.device.size_bytes(),
        "state_dict": model.state_dict(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    tmp.replace(path)
    return path


def load_reranker(path, schema: Schema | None = None) -> tuple[Reranker, dict[str, Any]]:
    """Rebuild a saved reranker; with ``schema`` given, refuse one built for another schema.

    Returns the model (eval mode) and the checkpoint's metadata (everything but the weights).
    """
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"no model checkpoint at {path}") from None
    except Exception as e:
        raise ValueError(f"{path} is not a readable model checkpoint: {e}") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} checkpoint")
    if blob.get("version") != VERSION:
        raise ValueError(f"{path} has checkpoint version {blob.get('version')}, expected {VERSION}")
    saved = Schema.from_dict(blob["schema"])
    if schema is not None and saved != schema:
        raise ValueError(f"{path} was trained on another dataset schema than the one given")
    try:
        mcfg = ModelConfig(**blob["model_config"])
    except TypeError as e:
        raise ValueError(f"{path}: malformed model config: {e}") from e
    model = build_model(mcfg, saved, blob["n_items"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match model {mcfg.name!r}: {e}") from e
    model.eval()
    meta = {k: v for k, v in blob.items() if k != "state_dict"}
    return model, meta
