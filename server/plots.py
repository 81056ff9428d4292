"""PNG plots of a run's ``metrics.csv``: evaluation metrics, training loss and bytes by round."""

from __future__ import annotations

from pathlib import Path

from shoal.server.outputs import read_metrics

PLOTS = {
    "gauc.png": [("gauc", b) for b in ("all", "tail", "torso", "head")],
    "ndcg.png": [("ndcg@10", "all"), ("uauc", "all")],
    "train_loss.png": [("train_loss", "all")],
    "bytes.png": [("bytes_up", "all"), ("bytes_down", "all")],
}


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the plots that have data into ``<run_dir>/plots/``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    strategy = rows[0]["strategy"] if rows else ""
    for name, series in PLOTS.items():
        fig, ax = plt.subplots(figsize=(5, 3.2))
        drawn = 0
        for metric, bucket in series:
            pts = [
                (r["round"], r["value"])
                for r in rows
                if r["metric"] == metric and r["bucket"] == bucket
            ]
            if pts:
                xs, ys = zip(*sorted(pts))
                ax.plot(xs, ys, marker="o", ms=3, label=f"{metric} ({bucket})")
                drawn += 1
        if drawn:
            ax.set_xlabel("round")
            ax.set_title(f"{strategy}: {name[:-4].replace('_', ' ')}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(out_dir / name, dpi=100)
            written.append(out_dir / name)
        plt.close(fig)
    return written
