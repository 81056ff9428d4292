"""PNG plots of a comparison report.

* ``gauc_rounds.png``: GAUC (all users) at every evaluation round, mean over seeds per
  strategy, with a band of the Student-t interval over seeds;
* ``gauc_buckets.png``: final GAUC by activity bucket, grouped bars with interval whiskers;
* ``utility_bytes.png``: final GAUC against total communication (model bytes up + down);
* ``gauc_epsilon.png`` (only when a run reports ``epsilon``): GAUC against ε at the
  evaluation rounds of private runs, with the final GAUC of the other strategies as lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from shoal.experiments.report import RunResult
from shoal.experiments.report_stats import mean_ci

BUCKETS = ("all", "tail", "torso", "head")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(strategies: Sequence[str]) -> dict[str, object]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {s: cmap(i % 10) for i, s in enumerate(strategies)}


def _band(values: Sequence[float], confidence: float) -> tuple[float, float]:
    iv = mean_ci(values, confidence)
    half = 0.0 if math.isnan(iv.half) else iv.half
    return iv.mean, half


def _clip(m: float, h: float) -> tuple[float, float]:
    """An interval of a GAUC clipped to [0, 1] (few seeds give intervals wider than that)."""
    return max(m - h, 0.0), min(m + h, 1.0)


def _by_strategy(runs: Sequence[RunResult], strategies: Sequence[str]) -> dict[str, list]:
    return {s: [r for r in runs if r.strategy == s] for s in strategies}


def _final(run: RunResult, metric: str, bucket: str = "all") -> float | None:
    v = run.summary.get("final", {}).get(metric, {}).get(bucket)
    return None if v is None else float(v)


def plot_gauc_rounds(runs, strategies, path: Path, confidence: float = 0.95) -> bool:
    """GAUC vs round per strategy with a band over seeds; False when there is nothing."""
    plt = _pyplot()
    colors = _colors(strategies)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for s, rs in _by_strategy(runs, strategies).items():
        series = [r.series("gauc") for r in rs]
        rounds = sorted(set().union(*series)) if series else []
        xs, mid, lo, hi = [], [], [], []
        for rnd in rounds:
            vals = [sr[rnd] for sr in series if rnd in sr]
            m, h = _band(vals, confidence)
            xs.append(rnd)
            mid.append(m)
            lo.append(_clip(m, h)[0])
            hi.append(_clip(m, h)[1])
        if xs:
            ax.plot(xs, mid, marker="o", ms=3, color=colors[s], label=f"{s} (n={len(rs)})")
            ax.fill_between(xs, lo, hi, color=colors[s], alpha=0.12, linewidth=0)
            drawn = True
    if drawn:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round")
        ax.set_ylabel("GAUC (all users)")
        ax.set_title(f"GAUC by round: mean over seeds, {confidence:.0%} interval band")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def plot_gauc_buckets(runs, strategies, path: Path, confidence: float = 0.95) -> bool:
    """Final GAUC by activity bucket, one bar per strategy within each bucket group."""
    plt = _pyplot()
    colors = _colors(strategies)
    groups = _by_strategy(runs, strategies)
    present = [s for s in strategies if groups[s]]
    if not present:
        return False
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    width = 0.8 / len(present)
    low, high = 1.0, 0.0
    for i, s in enumerate(present):
        xs, ms, err_lo, err_hi = [], [], [], []
        for j, b in enumerate(BUCKETS):
            vals = [v for r in groups[s] if (v := _final(r, "gauc", b)) is not None]
            if vals:
                m, h = _band(vals, confidence)
                lo, hi = _clip(m, h)
                xs.append(j - 0.4 + width * (i + 0.5))
                ms.append(m)
                err_lo.append(m - lo)
                err_hi.append(hi - m)
                low, high = min(low, m), max(high, hi)
        ax.bar(xs, ms, width, yerr=[err_lo, err_hi], capsize=2, color=colors[s], label=s)
    ax.set_xticks(range(len(BUCKETS)), BUCKETS)
    bottom = max(0.0, math.floor((low - 0.05) * 20) / 20)  # bars start near the lowest mean
    ax.set_ylim(bottom, min(1.0, high + 0.02) if high > bottom else bottom + 0.1)
    ax.set_ylabel(f"final GAUC (axis from {bottom:g})")
    ax.set_title(f"Final GAUC by activity bucket (whiskers: {confidence:.0%} interval)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_utility_bytes(runs, strategies, path: Path, confidence: float = 0.95) -> bool:
    """Final GAUC against total model bytes exchanged (MB)."""
    plt = _pyplot()
    colors = _colors(strategies)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for s, rs in _by_strategy(runs, strategies).items():
        pts = [
            (
                (r.summary["totals"]["bytes_up"] + r.summary["totals"]["bytes_down"]) / 1e6,
                _final(r, "gauc"),
            )
            for r in rs
            if "totals" in r.summary and _final(r, "gauc") is not None
        ]
        if not pts:
            continue
        mb, g = zip(*pts)
        xm, xh = _band(mb, confidence)
        ym, yh = _band(g, confidence)
        ylo, yhi = _clip(ym, yh)
        ax.scatter(mb, g, color=colors[s], alpha=0.35, s=12)
        ax.errorbar(
            [xm],
            [ym],
            xerr=[xh],
            yerr=[[ym - ylo], [yhi - ym]],
            fmt="o",
            color=colors[s],
            capsize=3,
            label=s,
        )
        drawn = True
    if drawn:
        ax.set_xlim(left=0.0)
        ax.set_xlabel("model bytes exchanged over the run (MB, up + down)")
        ax.set_ylabel("final GAUC (all users)")
        ax.set_title("Utility vs communication (dots: seeds; marker: mean ± interval)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def plot_gauc_epsilon(runs, strategies, path: Path, confidence: float = 0.95) -> bool:
    """GAUC vs ε of runs that report ``epsilon``; other strategies as horizontal lines."""
    private = {r.strategy for r in runs if r.series("epsilon")}
    if not private:
        return False
    plt = _pyplot()
    colors = _colors(strategies)
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for s, rs in _by_strategy(runs, strategies).items():
        if not rs:
            continue
        if s in private:
            pts: dict[int, list[tuple[float, float]]] = {}
            for r in rs:
                eps, gauc = r.series("epsilon"), r.series("gauc")
                for rnd in sorted(set(eps) & set(gauc)):
                    pts.setdefault(rnd, []).append((eps[rnd], gauc[rnd]))
            rounds = sorted(pts)
            xs = [_band([e for e, _ in pts[k]], confidence)[0] for k in rounds]
            bands = [_band([g for _, g in pts[k]], confidence) for k in rounds]
            ys = [m for m, _ in bands]
            ax.plot(xs, ys, marker="o", ms=3, color=colors[s], label=f"{s} (by round)")
            ax.fill_between(
                xs,
                [_clip(m, h)[0] for m, h in bands],
                [_clip(m, h)[1] for m, h in bands],
                color=colors[s],
                alpha=0.18,
                linewidth=0,
            )
        else:
            vals = [v for r in rs if (v := _final(r, "gauc")) is not None]
            if vals:
                ax.axhline(
                    _band(vals, confidence)[0], color=colors[s], ls="--", lw=1, label=f"{s} (ε = ∞)"
                )
    ax.set_xlabel("ε (user-level, at the run's δ)")
    ax.set_ylabel("GAUC (all users)")
    ax.set_title("Privacy vs utility")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PLOTS = {
    "gauc_rounds.png": (plot_gauc_rounds, "GAUC by round"),
    "gauc_buckets.png": (plot_gauc_buckets, "Final GAUC by activity bucket"),
    "utility_bytes.png": (plot_utility_bytes, "Utility vs communication"),
    "gauc_epsilon.png": (plot_gauc_epsilon, "GAUC vs ε"),
}
"""File name → (plot function, caption)."""


def write_plots(
    runs: Sequence[RunResult], strategies: Sequence[str], out_dir: Path, confidence: float = 0.95
) -> dict[str, str]:
    """Write every plot that has data into ``out_dir``; returns file name → caption."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, (fn, caption) in PLOTS.items():
        path = out_dir / name
        if fn(runs, strategies, path, confidence):
            written[name] = caption
        elif path.exists():  # a stale plot of an earlier report
            path.unlink()
    return written
