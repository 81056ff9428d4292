"""``shoal compare``: every strategy × seed on identical data, then one report.

Runs differ only in ``fed.strategy`` and ``seed`` (:func:`~shoal.experiments.compare_config.
run_config`): the data seed is fixed, so all see the same data, splits and round budget, and
one seed gives every strategy the same device sample schedule. Each run is a separate
``shoal simulate`` process, so Ray's processes and resources end with it. Runs go one after
another (each already uses every core through its Ray actors).

``<reports>/<name>/`` holds ``index.json`` (strategy × seed → run directory, state, wall
time), ``config.yaml`` (the resolved comparison config), ``logs/`` (one log per run) and the
report (:mod:`shoal.experiments.report_write`). Rerunning the same comparison skips runs whose
directory has ``summary.json``, continues interrupted ones from their last checkpoint, and
rebuilds the report; extending ``strategies`` or ``seeds`` runs only what is new.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from shoal.config import ConfigError, ShoalConfig, to_yaml
from shoal.experiments.compare_config import (
    CompareConfig,
    base_config,
    run_config,
    seeds,
    strategy_names,
)
from shoal.experiments.compare_live import CompareDisplay, JobState
from shoal.experiments.report import choose_baseline
from shoal.experiments.report_write import ReportFiles, RunEntry, write_report

INDEX = "index.json"
IGNORED_KEYS = ("out_dir", "fed.resume")
"""Keys that may change between sessions of one comparison (they do not change results)."""


@dataclass
class Job:
    """One strategy × seed."""

    strategy: str
    seed: int
    cfg: ShoalConfig

    @property
    def key(self) -> str:
        return job_key(self.strategy, self.seed)


def job_key(strategy: str, seed: int) -> str:
    """The index key of a strategy × seed."""
    return f"{strategy}/seed{seed}"


def plan(cfg: CompareConfig) -> list[Job]:
    """Every strategy × seed, seed by seed (a full first seed comes early)."""
    base = base_config(cfg)
    return [
        Job(s, seed, run_config(base, s, seed))
        for seed in seeds(base, cfg.compare.seeds)
        for s in strategy_names(cfg)
    ]


def _flat(cfg: ShoalConfig) -> dict[str, object]:
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    out: dict[str, object] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif prefix not in IGNORED_KEYS:
            out[prefix] = node

    walk("", container)
    return out


def check_same_settings(index: dict, base: ShoalConfig, name: str) -> None:
    """Refuse to mix runs of other settings into a report.

    Raises
    ------
    ConfigError
        A key both the index and ``base`` have differs (the message names them).
    """
    old, new = index.get("settings", {}), _flat(base)
    diff = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(old) if k in new and old[k] != new[k]]
    if diff:
        shown = "; ".join(diff[:6]) + ("; ..." if len(diff) > 6 else "")
        raise ConfigError(
            f"report {name!r} holds runs with other settings ({shown}); pass another name= "
            "for a new comparison, or delete the report folder to start it again"
        )


def load_index(report_dir: Path) -> dict:
    """``index.json`` of a report folder (an empty index when there is none)."""
    path = report_dir / INDEX
    if not path.is_file():
        return {"runs": {}, "sessions": []}
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(index, dict) or not isinstance(index.get("runs"), dict):
        raise ValueError(f"{path} is not a compare index (no 'runs' mapping)")
    index.setdefault("sessions", [])
    return index


def save_index(report_dir: Path, index: dict) -> None:
    """Write ``index.json`` atomically."""
    tmp = report_dir / f".{INDEX}.tmp"
    tmp.write_text(json.dumps(index, indent=1, default=str))
    os.replace(tmp, report_dir / INDEX)


def is_finished(run_dir: str | Path | None) -> bool:
    """A run is finished when its directory has ``summary.json``."""
    return run_dir is not None and (Path(run_dir) / "summary.json").is_file()


def _latest(run_dir: Path) -> tuple[int, float]:
    """(last round in ``metrics.csv``, its latest GAUC) while a run is going."""
    from shoal.server.outputs import read_metrics

    try:
        rows = read_metrics(run_dir)
    except (ValueError, KeyError, OSError):  # a row being written
        return 0, float("nan")
    last = max((r["round"] for r in rows), default=0)
    g = [r for r in rows if r["metric"] == "gauc" and r["bucket"] == "all"]
    return last, (g[-1]["value"] if g else float("nan"))


def _stop(proc: subprocess.Popen) -> None:
    """Stop a run's process group: SIGINT (Ray shuts down), then SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGINT, 8.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def simulate_command(run_dir: Path) -> list[str]:
    """The child process of one run: ``shoal simulate`` continuing the prepared directory."""
    return [sys.executable, "-m", "shoal.cli", "simulate", "--no-progress", f"resume={run_dir}"]


def run_child(
    run_dir: Path, log: Path, on_poll: Callable[[int, float], None], poll_s: float = 0.5
) -> int:
    """Run one simulation in its own process group; returns its exit status.

    ``on_poll(round, gauc)`` is called with the child's progress (read from its
    ``metrics.csv``) every ``poll_s`` seconds. On ``KeyboardInterrupt`` the child is stopped
    and the interrupt re-raised.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [str(c) for c in simulate_command(run_dir)]
    with log.open("a") as out:
        out.write(f"\n$ {shlex.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            while True:
                try:
                    rc = proc.wait(timeout=poll_s)
                    on_poll(*_latest(run_dir))
                    return rc
                except subprocess.TimeoutExpired:
                    on_poll(*_latest(run_dir))
        except BaseException:
            _stop(proc)
            raise


def _strategy_docs(names: list[str]) -> dict[str, str]:
    from shoal.registry import STRATEGIES

    docs = {}
    for n in names:
        doc = (sys.modules[STRATEGIES.get(n).__module__].__doc__ or "").strip()
        line = doc.splitlines()[0] if doc else ""
        docs[n] = line.split(":", 1)[1].strip() if line.startswith("``") and ":" in line else line
    return docs


def _entry(d: dict) -> RunEntry:
    return RunEntry(d["strategy"], int(d["seed"]), d["run_dir"], d["status"], d["seconds"])


def _initial_states(jobs: list[Job], runs: dict[str, dict]) -> dict[str, JobState]:
    """Display states: finished runs are ``skipped`` (marked ``done`` in the index)."""
    states = {}
    for j in jobs:
        d = runs.get(j.key, {})
        done = is_finished(d.get("run_dir"))
        st = JobState(j.strategy, j.seed, j.cfg.fed.rounds, seconds=float(d.get("seconds", 0.0)))
        if done:
            d["status"], st.status = "done", "skipped"
            st.round, st.gauc = j.cfg.fed.rounds, _latest(Path(d["run_dir"]))[1]
        states[j.key] = st
    return states


def _run_job(st: JobState, d: dict, log: Path, save: Callable[[], None]) -> int:
    """Run one prepared strategy × seed; update its state and index entry; exit status.

    An interrupt marks it ``interrupted`` (saved) and propagates.
    """
    st.started = time.monotonic()

    def poll(rnd: int, gauc: float) -> None:
        st.round, st.gauc = rnd, gauc

    try:
        rc = run_child(Path(d["run_dir"]), log, poll)
    except BaseException:
        d["status"] = st.status = "interrupted"
        d["seconds"] = st.elapsed(time.monotonic())
        save()
        raise
    d["seconds"] = st.seconds = st.elapsed(time.monotonic())
    st.started = None
    if rc == 0 and not is_finished(d["run_dir"]):
        rc = -1  # exited cleanly without finishing: count it as a failure
    d["status"] = st.status = "done" if rc == 0 else "failed"
    if rc == 0:
        d.pop("exit_status", None)
        d.pop("log", None)
    else:
        d["exit_status"], d["log"] = rc, str(log)
    return rc


def compare(
    cfg: CompareConfig, command: str, live: bool | None = None
) -> tuple[ReportFiles, list[str]]:
    """Run every strategy × seed of ``cfg`` not finished yet, then write the report.

    Parameters
    ----------
    cfg : CompareConfig
    command : str
        The command line, written into the report's "Reproduce" section.
    live : bool, optional
        Live table (default: when stdout is a terminal).

    Returns
    -------
    (ReportFiles, list of str)
        What was written, and the keys (``strategy/seed<k>``) of runs that failed.

    Raises
    ------
    ConfigError
        Unknown strategies, or a report of the same name made with other settings.
    """
    from shoal.server.setup import prepare_run

    jobs = plan(cfg)  # validates the strategy names first
    names = list(dict.fromkeys(j.strategy for j in jobs))
    try:
        choose_baseline(names, cfg.compare.baseline)
    except ValueError as e:
        raise ConfigError(f"config key 'compare.baseline': {e}") from None
    report_dir = Path(cfg.compare.reports) / cfg.compare.name
    report_dir.mkdir(parents=True, exist_ok=True)
    index = load_index(report_dir)
    check_same_settings(index, base_config(cfg), cfg.compare.name)
    index["settings"] = _flat(base_config(cfg))
    (report_dir / "config.yaml").write_text(to_yaml(cfg))
    runs: dict[str, dict] = index["runs"]
    states = _initial_states(jobs, runs)
    session = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "ran": 0}
    index["sessions"].append(session)
    t0 = time.monotonic()
    failed: list[str] = []

    def save() -> None:
        session["seconds"] = round(time.monotonic() - t0, 1)
        save_index(report_dir, index)

    with CompareDisplay(cfg.compare.name, list(states.values()), live) as display:
        for j in jobs:
            st = states[j.key]
            if st.status == "skipped":
                continue
            d = runs.get(j.key)
            if d is None or not (Path(d["run_dir"]) / "config.yaml").is_file():
                d = {"strategy": j.strategy, "seed": j.seed, "seconds": 0.0, "status": "new"}
                d["run_dir"] = str(prepare_run(j.cfg))
                runs[j.key] = d
                st.seconds = 0.0
            d["status"] = st.status = "running"
            save()
            display.event(st, "resumed" if d["seconds"] else "started")
            log = report_dir / "logs" / f"{j.strategy}-seed{j.seed}.log"
            rc = _run_job(st, d, log, save)
            session["ran"] += 1
            if rc != 0:
                failed.append(j.key)
            save()
            display.event(st, st.status if rc == 0 else f"FAILED (exit {rc}, log {log})")
    save()
    entries = [_entry(runs[j.key]) for j in jobs if j.key in runs]
    seed_list = sorted({j.seed for j in jobs})
    files = write_report(report_dir, cfg, names, seed_list, entries, command, _strategy_docs(names))
    return files, failed
