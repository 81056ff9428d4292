"""The device store: per-device state that must survive rounds.

Personal parameters, optimizer or accountant state and counters of a device live here, never
in a reply to the server. A value is a flat state dict of tensors (scalars as 0-d tensors),
saved under a name ("personal", "accountant", ...) and **versioned by round**: a load during
round ``r`` returns the newest version written in a round before ``r``. A resumed run repeats
its first round after an interruption, so a device that had already saved during that round
does not start from its own half-finished future; the store keeps the two newest versions.

Two backends share the interface:

* :class:`DiskStore`: one file per device and name under a folder of the run directory
  (``<root>/<name>/<device // 1000>/<device>.r<round>.pt``), so 100,000 devices do not sit
  in memory and state survives a resume. Writes are atomic (temporary file + rename).
* :class:`MemoryStore`: Flower's ``context.state`` (kept per node, in memory, for one run);
  for small state. Flower copies the context with every message, so keep it small.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context

FORMAT = "shoal-device-state"
VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_KEEP = 2


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"device-state name must be [A-Za-z0-9_-]+, got {name!r}")


def _check_state(state: dict[str, torch.Tensor]) -> None:
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError("device state must be a dict of str -> torch.Tensor")


class DiskStore:
    """Device state in one file per device and name.

    Parameters
    ----------
    root : str or Path
        Folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _dir(self, device: int, name: str) -> Path:
        return self.root / name / f"{device // 1000:05d}"

    def _versions(self, device: int, name: str) -> list[tuple[int, Path]]:
        d = self._dir(device, name)
        if not d.is_dir():
            return []
        prefix = f"{device}.r"
        out = []
        for p in d.iterdir():
            if p.name.startswith(prefix) and p.name.endswith(".pt"):
                r = p.name[len(prefix) : -3]
                if r.isdigit():
                    out.append((int(r), p))
        return sorted(out)

    def load(self, device: int, name: str, before_round: int) -> dict[str, torch.Tensor] | None:
        """Newest state saved in a round ``< before_round`` (None if there is none).

        Raises
        ------
        ValueError
            A corrupt file or one of another format, device or name; the message names it.
        """
        _check_name(name)
        older = [(r, p) for r, p in self._versions(device, name) if r < before_round]
        if not older:
            return None
        r, path = older[-1]
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for a damaged file
            raise ValueError(f"device state file {path} is unreadable: {e}") from e
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"{path} is not a Shoal device-state file")
        if blob.get("version") != VERSION:
            raise ValueError(f"{path}: device-state version {blob.get('version')} != {VERSION}")
        if blob.get("device") != device or blob.get("name") != name or blob.get("round") != r:
            raise ValueError(f"{path} holds device {blob.get('device')} / {blob.get('name')}")
        _check_state(blob["state"])
        return blob["state"]

    def save(self, device: int, name: str, state: dict[str, torch.Tensor], round: int) -> None:
        """Save ``state`` as written in ``round``; keep only the two newest versions."""
        _check_name(name)
        _check_state(state)
        d = self._dir(device, name)
        d.mkdir(parents=True, exist_ok=True)
        blob = {"format": FORMAT, "version": VERSION, "device": device, "name": name}
        blob.update(round=round, state={k: v.detach().cpu() for k, v in state.items()})
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(blob, tmp)
            os.replace(tmp, d / f"{device}.r{round}.pt")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        for _, p in self._versions(device, name)[:-_KEEP]:
            p.unlink(missing_ok=True)


class MemoryStore:
    """Device state in Flower's ``context.state`` of the device's node.

    Parameters
    ----------
    context : flwr.app.Context
        The node's context (its ``state`` persists across rounds within one run).
    """

    def __init__(self, context: Context) -> None:
        self.state = context.state

    def _versions(self, name: str) -> list[tuple[int, str]]:
        prefix = f"shoal.{name}.r"
        keys = [k for k in self.state.array_records if k.startswith(prefix)]
        return sorted((int(k[len(prefix) :]), k) for k in keys)

    def load(self, device: int, name: str, before_round: int) -> dict[str, torch.Tensor] | None:
        """Newest state saved in a round ``< before_round`` (None if there is none)."""
        _check_name(name)
        older = [(r, k) for r, k in self._versions(name) if r < before_round]
        if not older:
            return None
        return dict(self.state.array_records[older[-1][1]].to_torch_state_dict())

    def save(self, device: int, name: str, state: dict[str, torch.Tensor], round: int) -> None:
        """Save ``state`` as written in ``round``; keep only the two newest versions."""
        _check_name(name)
        _check_state(state)
        self.state[f"shoal.{name}.r{round}"] = ArrayRecord(
            {k: v.detach().cpu() for k, v in state.items()}
        )
        for _, k in self._versions(name)[:-_KEEP]:
            del self.state[k]


DeviceStore = DiskStore | MemoryStore


def open_store(kind: str, run_dir: str | Path, context: Context) -> DeviceStore:
    """The store a run configured: ``disk`` under ``<run_dir>/store`` or ``memory``."""
    if kind == "disk":
        return DiskStore(Path(run_dir) / "store")
    if kind == "memory":
        return MemoryStore(context)
    raise ValueError(f"unknown device store {kind!r}; use disk or memory")
