"""On-disk format of a :class:`~shoal.datasets.requests.RequestLog` (see docs/data-format.md).

A dataset is a folder holding ``meta.json`` and one ``.npy`` file per array. ``.npy`` keeps
dtype and shape, loads at disk speed and can be memory-mapped (``mmap=True``) so a large log
is paged in on demand. A save writes into a temporary sibling folder and renames it into place,
so an interrupted save never leaves a half-written dataset where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from shoal.datasets.requests import ARRAY_SPEC, OPTIONAL_ARRAYS, RequestLog
from shoal.datasets.schema import Schema
from shoal.runs import json_default

FORMAT = "shoal-request-log"
VERSION = 1


def save(log: RequestLog, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``log`` to the folder ``path``.

    Parameters
    ----------
    log : RequestLog
        Validated before writing.
    path : str or Path
        Target folder; must not exist unless ``overwrite``.
    overwrite : bool
        Replace an existing dataset folder (only one that holds a ``meta.json``).

    Returns
    -------
    Path
        The folder written.
    """
    path = Path(path)
    log.validate()
    if path.exists():
        if not overwrite:
            raise ValueError(f"{path} exists; pass overwrite=True to replace it")
        if not (path / "meta.json").is_file():
            raise ValueError(f"{path} exists and is not a Shoal dataset; refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        arrays = log.arrays()
        meta = {
            "format": FORMAT,
            "version": VERSION,
            "name": log.name,
            "schema": log.schema.to_dict(),
            "info": log.info or {},
            "arrays": {
                k: {"dtype": str(a.dtype), "shape": list(a.shape)} for k, a in arrays.items()
            },
        }
        for k, a in arrays.items():
            np.save(tmp / f"{k}.npy", np.ascontiguousarray(a), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, default=json_default))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load(path: str | Path, mmap: bool = False) -> RequestLog:
    """Read a dataset folder written by :func:`save`.

    Parameters
    ----------
    path : str or Path
        The dataset folder.
    mmap : bool
        Memory-map the arrays read-only instead of reading them into memory.

    Raises
    ------
    ValueError
        Missing or corrupt ``meta.json`` or array file, a format version this Shoal does not
        read, or arrays whose dtype/shape disagree with the metadata; the message names the file.
    """
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise ValueError(f"{path} is not a Shoal dataset folder (no meta.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path} is corrupt: {e}") from e
    if not isinstance(meta, dict) or not {"name", "schema", "arrays"} <= set(meta):
        raise ValueError(f"{meta_path} is corrupt: expected an object with name, schema, arrays")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r} is not {FORMAT!r}")
    if meta.get("version") != VERSION:
        raise ValueError(
            f"{meta_path}: format version {meta.get('version')} cannot be read by this Shoal "
            f"(reads version {VERSION}); regenerate the dataset"
        )
    arrays = {}
    for name, spec in meta["arrays"].items():
        if name not in ARRAY_SPEC and name not in OPTIONAL_ARRAYS:
            raise ValueError(f"{meta_path}: unknown array {name!r}")
        f = path / f"{name}.npy"
        try:
            a = np.load(f, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"{f}: cannot read array ({e})") from e
        if str(a.dtype) != spec["dtype"] or list(a.shape) != spec["shape"]:
            raise ValueError(
                f"{f}: expected {spec['dtype']} {spec['shape']}, found {a.dtype} {list(a.shape)}"
            )
        arrays[name] = a
    missing = sorted(set(ARRAY_SPEC) - set(arrays))
    if missing:
        raise ValueError(f"{path}: arrays missing from meta.json: {missing}")
    log = RequestLog(
        name=meta["name"], schema=Schema.from_dict(meta["schema"]), info=meta.get("info"), **arrays
    )
    log.validate()
    return log
