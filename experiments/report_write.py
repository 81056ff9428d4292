"""Write a comparison report: ``results.csv``, plots, ``report.md`` and ``report.html``.

:func:`write_report` reads the finished runs listed in a comparison's index, so a report can
be rebuilt at any time from the run directories alone.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shoal import __version__
from shoal.experiments.compare_config import CompareConfig
from shoal.experiments.report import (
    RunResult,
    choose_baseline,
    load_run,
    paired_differences,
    result_rows,
    summary_table,
    write_results_csv,
)
from shoal.experiments.report_plots import write_plots
from shoal.experiments.report_render import (
    Block,
    paired_block,
    table_block,
    to_html,
    to_markdown,
    verdict_items,
)


@dataclass
class RunEntry:
    """One strategy × seed of a comparison, as its index records it."""

    strategy: str
    seed: int
    run_dir: str
    status: str
    """``done``, ``running``, ``failed`` or ``interrupted``."""
    seconds: float = 0.0
    """Wall time of the run's process (the sum over sessions when it was resumed)."""


@dataclass
class ReportFiles:
    """What :func:`write_report` wrote."""

    report_md: Path
    results_csv: Path
    plots: list[Path]
    report_html: Path | None
    runs: list[RunResult]


def _what_was_run(cfg: CompareConfig, runs: Sequence[RunResult], seeds: Sequence[int]) -> Block:
    fed, sim, m = cfg.fed, cfg.sim, cfg.model
    data_seed = cfg.data_seed if cfg.data_seed is not None else cfg.seed
    devices = sorted({r.summary.get("devices") for r in runs if r.summary.get("devices")})
    dev = f"{devices[0]:,} devices with data" if len(devices) == 1 else "devices: see runs"
    source = f"{sim.users:,} simulated users, {sim.items:,} items" if cfg.dataset == "sim" else ""
    if cfg.path:
        source = f"`{cfg.path}`"
    s = cfg.split
    return Block(
        "list",
        items=[
            f"**Data**: `{cfg.dataset}`, {source}, {dev}; data seed {data_seed}. Every run "
            f"uses the same data and the same per-user time splits (cloud history {s.cloud} / "
            f"device-fresh {s.device} / test {s.test}).",
            f"**Seeds**: {', '.join(map(str, seeds))} (model initialisation and device "
            "sampling). For one seed every strategy samples the same devices in the same rounds.",
            f"**Round budget**: {fed.rounds} rounds; a share {fed.fraction} of devices trains "
            f"each round ({fed.local_epochs} local epoch(s), {fed.local_optimizer}, lr "
            f"{fed.local_lr}); evaluation every {fed.eval_every} rounds and after the last, on "
            f"a fixed share {fed.eval_fraction} of devices.",
            f"**Model**: `{m.name}` (hidden {m.hidden}, {m.gru_layers} GRU layer(s), MLP "
            f"{m.mlp}); the cloud model every strategy starts from is trained on cloud history "
            f"for at most {cfg.train.epochs} epochs.",
            "**Isolation**: each strategy × seed ran in its own process (`shoal simulate`).",
            *_privacy_line(cfg, runs),
        ],
    )


def _privacy_line(cfg: CompareConfig, runs: Sequence[RunResult]) -> list[str]:
    """The DP settings, when a run reports ε."""
    private = sorted({r.strategy for r in runs if r.series("epsilon")})
    if not private:
        return []
    dp = cfg.dp
    delta = f"{dp.delta:g}" if dp.delta else "1/#devices"
    clip = f"{dp.clipping_norm:g}" + (" (adaptive)" if dp.adaptive else "")
    return [
        f"**Privacy** ({', '.join(f'`{s}`' for s in private)}): noise multiplier "
        f"{dp.noise_multiplier:g}, clipping norm {clip} ({dp.clipping}-side), δ = {delta}, "
        f"{dp.accountant} accountant; ε is the run's value after its last round."
    ]


def _runs_block(entries: Sequence[RunEntry]) -> Block:
    rows = [
        [f"`{e.strategy}`", str(e.seed), e.status, f"{e.seconds:.0f}", f"`{e.run_dir}`"]
        for e in entries
    ]
    return Block("table", header=["strategy", "seed", "status", "wall s", "run"], rows=rows)


def build_blocks(
    cfg: CompareConfig,
    strategies: Sequence[str],
    seeds: Sequence[int],
    entries: Sequence[RunEntry],
    runs: Sequence[RunResult],
    plots: dict[str, str],
    table_md: Block,
    verdicts: list[str],
    paired: tuple[str, Block] | None,
    command: str,
    docs: dict[str, str],
    config_path: Path,
) -> list[Block]:
    """The blocks of ``report.md`` / ``report.html``."""
    c = cfg.compare
    missing = [e for e in entries if e.status != "done"]
    blocks = [
        Block("h1", f"Strategy comparison `{c.name}`"),
        Block(
            "p",
            f"{len(strategies)} strategies × {len(seeds)} seeds on `{cfg.dataset}`, "
            f"{len(runs)} finished runs. Written {time.strftime('%Y-%m-%d %H:%M')} by shoal "
            f"{__version__}.",
        ),
        Block("h2", "What was run"),
        _what_was_run(cfg, runs, seeds),
        Block("list", items=[f"`{s}`: {docs.get(s, '')}" for s in strategies]),
        Block("h2", "Results"),
        Block(
            "p",
            f"Final-round values, mean ± {c.confidence:.0%} confidence interval over seeds "
            "(Student t with n − 1 degrees of freedom; a single seed has no interval). ↑: higher "
            "is better, ↓: lower is better. **Bold** marks a column's winner, and only when its "
            "interval does not overlap the interval of any other strategy: differences smaller "
            "than the intervals are not called wins. Every value per seed is in `results.csv`.",
        ),
        table_md,
        Block("list", items=verdicts),
    ]
    if paired is not None:
        baseline, block = paired
        blocks += [
            Block(
                "p",
                f"**Differences to `{baseline}`, seed by seed.** Runs of one seed share the "
                "data, the model initialisation and the device schedule, so the difference "
                "taken seed by seed cancels the variation they share and its interval is "
                f"narrower than the table's. Mean ± {c.confidence:.0%} interval of (strategy − "
                f"`{baseline}`); **bold**: the interval excludes 0.",
            ),
            block,
        ]
    if missing:
        blocks.append(
            Block(
                "p",
                "**Incomplete**: "
                + ", ".join(f"`{e.strategy}` seed {e.seed} ({e.status})" for e in missing)
                + ". Rerun the command below to finish them; finished runs are not rerun.",
            )
        )
    blocks.append(Block("h2", "Plots"))
    blocks += [Block("img", name, caption=cap) for name, cap in plots.items()]
    blocks += [
        Block("h2", "Reproduce"),
        Block("p", "The command that wrote this report:"),
        Block("code", command),
        Block(
            "p",
            f"The resolved configuration is in `{config_path.name}` next to this report; "
            "`shoal compare --config` with it reproduces these runs whatever the presets say "
            "later. With the same `name` finished runs are reused; pass another `name=` to run "
            "them again.",
        ),
        Block("code", f"shoal compare --config {config_path}"),
        Block("h2", "Runs"),
        _runs_block(entries),
    ]
    return blocks


def write_report(
    report_dir: Path,
    cfg: CompareConfig,
    strategies: Sequence[str],
    seeds: Sequence[int],
    entries: Sequence[RunEntry],
    command: str,
    docs: dict[str, str] | None = None,
) -> ReportFiles:
    """Write ``results.csv``, the plots, ``report.md`` and (``compare.html``) ``report.html``.

    Parameters
    ----------
    report_dir : Path
        ``<reports>/<name>/``; ``config.yaml`` (the resolved config) is expected there.
    entries : sequence of RunEntry
        Every strategy × seed; only ``done`` ones contribute results.
    command : str
        The command line that ran the comparison (shown under "Reproduce").
    docs : dict, optional
        Strategy → one-line description.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    runs = [load_run(e.strategy, e.seed, e.run_dir) for e in entries if e.status == "done"]
    rows = result_rows(runs)
    results = write_results_csv(report_dir / "results.csv", rows)
    table = summary_table(rows, strategies, cfg.compare.confidence)
    plots = write_plots(runs, strategies, report_dir, cfg.compare.confidence)
    baseline = choose_baseline(strategies, cfg.compare.baseline)
    diffs = paired_differences(rows, strategies, baseline, cfg.compare.confidence)
    paired = (baseline, paired_block(diffs, strategies, baseline)) if diffs else None
    blocks = build_blocks(
        cfg,
        strategies,
        seeds,
        entries,
        runs,
        plots,
        table_block(table),
        verdict_items(table),
        paired,
        command,
        docs or {},
        report_dir / "config.yaml",
    )
    md = report_dir / "report.md"
    md.write_text(to_markdown(blocks))
    page = None
    if cfg.compare.html:
        page = report_dir / "report.html"
        page.write_text(to_html(blocks, report_dir, f"Shoal comparison {cfg.compare.name}"))
    return ReportFiles(md, results, [report_dir / p for p in plots], page, runs)
