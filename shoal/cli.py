"""The ``shoal`` command: parses the command line and calls importable functions.

Every subcommand takes ``key=value`` overrides (OmegaConf dotlist) after its options, YAML
files with ``--config`` (a path or a name in ``experiments/configs/``), and ``--show-config``
to print the resolved configuration.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from shoal import __version__
from shoal.config import ConfigError, ShoalConfig, load_config, to_yaml


def _config_file(name: str) -> Path:
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        return p
    packaged = resources.files("shoal.experiments") / "configs" / f"{name}.yaml"
    if not packaged.is_file():
        names = sorted(
            f.name.removesuffix(".yaml")
            for f in (resources.files("shoal.experiments") / "configs").iterdir()
        )
        raise ConfigError(f"no config named {name!r}; packaged configs: {', '.join(names)}")
    return Path(str(packaged))


SHORTHANDS = {
    "model": "model.name",
    "strategy": "fed.strategy",
    "devices": "fed.devices",
    "rounds": "fed.rounds",
    "fraction": "fed.fraction",
    "resume": "fed.resume",
}
"""``key=value`` overrides that name a section's main field: ``model=dlcm`` → ``model.name``."""


def _expand(overrides: list[str]) -> list[str]:
    out = []
    for item in overrides:
        key, eq, value = item.partition("=")
        out.append(f"{SHORTHANDS[key]}={value}" if eq and key in SHORTHANDS else item)
    return out


def _load(args: argparse.Namespace) -> ShoalConfig:
    files = [_config_file(c) for c in args.config] if args.config else [_config_file("default")]
    cfg = load_config(files, _expand(args.overrides))
    if args.show_config:
        print(to_yaml(cfg), end="")
    return cfg


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        action="append",
        metavar="FILE_OR_NAME",
        help="YAML config (a path, or a name in experiments/configs); repeat to merge. "
        "Default: default",
    )
    p.add_argument("--show-config", action="store_true", help="print the resolved config")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def _print_table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, dict):
        return "  ".join(f"{k}={_fmt(x)}" for k, x in v.items())
    return str(v)


def cmd_data_describe(args: argparse.Namespace) -> int:
    from shoal.datasets import load_dataset
    from shoal.datasets.describe import describe

    cfg = _load(args)
    stats = describe(load_dataset(cfg), cfg)
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        _print_table(f"dataset {cfg.dataset}", [(k, _fmt(v)) for k, v in stats.items()])
    return 0


def cmd_data_generate(args: argparse.Namespace) -> int:
    from shoal.datasets import load_dataset, storage

    cfg = _load(args)
    log = load_dataset(cfg)
    path = storage.save(log, args.out, overwrite=args.overwrite)
    (path / "config.yaml").write_text(to_yaml(cfg))
    print(f"wrote {log.n_requests} requests of {log.n_users} users to {path}")
    return 0


def cmd_experiment_sim_signals(args: argparse.Namespace) -> int:
    from shoal.datasets import load_dataset
    from shoal.experiments import sim_signals
    from shoal.runs import make_run_dir, write_json

    cfg = _load(args)
    log = load_dataset(cfg)
    rep = sim_signals.report(log, cfg)
    run = make_run_dir(cfg, "sim-signals")
    write_json(run / "report.json", rep)
    rows = [("CTR", _fmt(rep["ctr"])), ("CTR by position (per 10)", _fmt(rep["position"]["ctr"]))]
    rows += [("activity", _fmt(rep["activity"]))]
    rows += [("behaviour probe GAUC", _fmt(rep["behaviour"]))]
    for b, v in rep["personalization"]["by_bucket"].items():
        rows.append((f"fine-tune vs global ({b})", _fmt(v)))
    _print_table("simulator signals", rows)
    print(f"report: {run / 'report.json'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from shoal.experiments.train import train

    cfg = _load(args)

    def on_epoch(rec: dict[str, float]) -> None:
        print(
            f"epoch {rec['epoch']:3d}  loss {rec['loss']:.4f}  val GAUC {rec['val_gauc']:.4f}"
            f"  ({rec['seconds']:.1f} s)",
            flush=True,
        )

    out = train(cfg, on_epoch=on_epoch)
    rows = [(f"test {m}", _fmt(v)) for m, v in out.test.items() if m in REPORTED]
    rows.append(("device network", f"{out.summary['device_bytes'] / 1024:.1f} KiB"))
    rows.append(("best epoch", str(out.summary["fit"]["best_epoch"])))
    _print_table(f"train {cfg.model.name} on {cfg.dataset}", rows)
    print(f"run: {out.run_dir}")
    return 0


REPORTED = ("gauc", "uauc", "ndcg@10", "logloss", "requests")


def cmd_simulate(args: argparse.Namespace) -> int:
    import shoal.strategies  # noqa: F401  (registers the strategies)
    from shoal.registry import STRATEGIES

    if args.list:
        for name in STRATEGIES.names():
            doc = (sys.modules[STRATEGIES.get(name).__module__].__doc__ or "").strip()
            print(f"{name:18s} {doc.splitlines()[0] if doc else ''}")
        return 0
    from shoal.experiments.simulate import simulate

    cfg = _load(args)
    STRATEGIES.get(cfg.fed.strategy)  # unknown names fail before anything starts
    run_dir, summary = simulate(cfg, progress=not args.no_progress)
    final = summary.get("final", {})
    rows = [(f"{m} (all)", _fmt(final[m]["all"])) for m in REPORTED if m in final]
    for m in ("bytes_up", "bytes_down", "round_seconds", "failures"):
        rows.append((m, _fmt(summary["totals"][m])))
    _print_table(f"{summary['strategy']} on {summary['dataset']}, {summary['rounds']} rounds", rows)
    print(f"run: {run_dir}")
    return 0


def cmd_experiment_table2(args: argparse.Namespace) -> int:
    from shoal.experiments import edgerec_table2 as t2
    from shoal.runs import make_run_dir, write_json

    cfg = _load(args)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    models = [m.strip() for m in args.models.split(",")] if args.models else list(t2.MODELS)
    unknown = [m for m in models if m not in t2.MODELS]
    if unknown:
        raise ValueError(f"not EdgeRec Table 2 models: {unknown}; known: {list(t2.MODELS)}")
    out = Path(args.out) if args.out else make_run_dir(cfg, "edgerec-table2")

    def on_result(r: dict) -> None:
        g = r["test"]["gauc"]["all"]
        print(f"{r['dataset']:9s} {r['model']:16s} seed {r['seed']}  GAUC {g:.4f}", flush=True)

    results = t2.run(cfg, out, datasets, args.seeds, models, args.workers, on_result)
    summary = t2.summarize(results)
    write_json(out / "summary.json", summary)
    table = t2.markdown(summary)
    (out / "table.md").write_text(table)
    print(table)
    print(f"results: {out}")
    return 0


def cmd_experiment_privacy(args: argparse.Namespace) -> int:
    from pathlib import Path

    from shoal.experiments import privacy_utility as pu
    from shoal.runs import make_run_dir

    cfg = _load(args)  # validates the overrides before hours of work
    out = Path(args.out) if args.out else make_run_dir(cfg, "privacy-utility")
    variants = [v.strip() for v in args.variants.split(";") if v.strip()] or None

    def on_result(r: dict) -> None:
        s = r.get("summary", {})
        gauc = s.get("final", {}).get("gauc", {}).get("all")
        eps = s.get("privacy", {}).get("epsilon")
        print(f"{r['label']}: GAUC {gauc}  ε {eps}  {r.get('error', '')}", flush=True)

    results = pu.run(out, args.overrides, variants, on_result)
    (out / "table.md").write_text(pu.markdown(results))
    pu.plot(results, out / "privacy_utility.png")
    print(pu.markdown(results))
    print(f"results: {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import shlex

    from shoal.experiments.compare import compare
    from shoal.experiments.compare_config import load_compare_config

    files = [_config_file(c) for c in args.config or []]
    cfg = load_compare_config(args.overrides, files)
    if args.show_config:
        print(to_yaml(cfg), end="")
    argv = [f"--config={c}" for c in args.config or []] + list(args.overrides)
    command = shlex.join(["shoal", "compare", *argv])
    try:
        files_out, failed = compare(cfg, command, live=False if args.no_live else None)
    except KeyboardInterrupt:
        print("shoal: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    print(f"report: {files_out.report_md}")
    if failed:
        print(f"shoal: {len(failed)} run(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal",
        description="Shoal: device-cloud collaborative learning for on-device recommendation.",
    )
    parser.add_argument("--version", action="version", version=f"shoal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    data = sub.add_parser("data", help="generate, load and describe datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="action")
    p = data_sub.add_parser(
        "describe",
        help="print users, requests, CTR, activity and sequence-length quantiles",
        description="Describe a dataset, e.g. `shoal data describe dataset=sim` or "
        "`shoal data describe dataset=kuairand path=../shared/data/kuairand-1k`.",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_common(p)
    p.set_defaults(func=cmd_data_describe)
    p = data_sub.add_parser(
        "generate",
        help="build a dataset and save it (docs/data-format.md)",
        description="Generate (sim) or parse (kuairand) a dataset and save it to a folder; "
        "load it later with path=<folder>.",
    )
    p.add_argument("--out", required=True, help="target folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    _add_common(p)
    p.set_defaults(func=cmd_data_generate)

    p = sub.add_parser(
        "train",
        help="train one reranker on pooled data (the centralized baseline)",
        description="Centralized training, e.g. `shoal train model.name=dlcm dataset=sim`: "
        "trains on cloud-history + device-fresh requests, early-stops on held-out pages, "
        "evaluates on test by activity bucket; writes runs/<timestamp>-train-<model>/ "
        "(config.yaml, metrics.json, model.pt). `model=<name>` is short for model.name.",
    )
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "simulate",
        help="run a federated strategy on Flower's simulation engine",
        description="Federated run, one Flower node per device, e.g. `shoal simulate "
        "strategy=fedavg dataset=sim devices=1000 rounds=20 fraction=0.1`; continue an "
        "interrupted run with `resume=<run dir>`. Shorthands: strategy, devices, rounds, "
        "fraction, resume (for fed.*). Writes runs/<timestamp>-<strategy>-<dataset>/.",
    )
    p.add_argument("--list", action="store_true", help="list the registered strategies")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    _add_common(p)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "compare",
        help="compare strategies on identical data and write a report",
        description="Every strategy x seed on the same data, splits, device schedule and "
        "round budget, each in its own process, then reports/<name>/ with report.md, "
        "results.csv and plots (mean ± 95% CI over seeds), e.g. `shoal compare preset=quick` "
        "or `shoal compare dataset=sim strategies=[fedavg,local-only] seeds=3 preset=quick`. "
        "preset=NAME reads experiments/configs/compare-NAME.yaml (default quick); strategies, "
        "seeds, name are short for compare.*; any other key=value overrides the runs' config. "
        "Resumable: rerun the same command to skip finished runs.",
    )
    p.add_argument("--no-live", action="store_true", help="print lines instead of a live table")
    _add_common(p)
    p.set_defaults(func=cmd_compare)

    exp = sub.add_parser("experiment", help="run a named experiment")
    exp_sub = exp.add_subparsers(dest="experiment", required=True, metavar="name")
    p = exp_sub.add_parser(
        "sim-signals",
        help="measure the simulator's signals (position bias, behaviour, personalization)",
        description="Check that the simulated logs carry the signals Shoal is about; writes "
        "runs/<timestamp>-sim-signals/report.json.",
    )
    _add_common(p)
    p.set_defaults(func=cmd_experiment_sim_signals)
    p = exp_sub.add_parser(
        "edgerec-table2",
        help="reproduce EdgeRec's Table 2 (six models x seeds, sim and KuaiRand)",
        description="Train the six EdgeRec models with the same budget on identical data "
        "and write a GAUC table (mean ± std over seeds) next to the paper's numbers. "
        "Resumable: rerun with the same --out to skip finished runs.",
    )
    p.add_argument("--datasets", default="sim,kuairand", help="comma-separated (default both)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per model (default 3)")
    p.add_argument("--models", default="", help="comma-separated subset (default all six)")
    p.add_argument("--workers", type=int, default=1, help="parallel training processes")
    p.add_argument("--out", default="", help="results folder (default a new run directory)")
    _add_common(p)
    p.set_defaults(func=cmd_experiment_table2)
    p = exp_sub.add_parser(
        "privacy-utility",
        help="GAUC vs ε: FedAvg, DP-FedAvg at several noise levels, on-device DP-SGD",
        description="Runs the variants of shoal.experiments.privacy_utility on 10,000 "
        "simulated devices (overrides apply to every variant), each in a fresh process; "
        "writes results.jsonl, table.md and privacy_utility.png. Resumable with --out.",
    )
    p.add_argument("--out", default="", help="results folder (default a new run directory)")
    p.add_argument("--variants", default="", help="';'-separated subset of variant labels")
    _add_common(p)
    p.set_defaults(func=cmd_experiment_privacy)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError) as e:
        print(f"shoal: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
