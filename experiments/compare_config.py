"""Typed configuration of ``shoal compare``: a :class:`ShoalConfig` plus a ``compare:`` section.

A comparison is built from (in order) the dataclass defaults, a preset
(``experiments/configs/compare-<preset>.yaml``), ``--config`` files and ``key=value``
overrides. ``strategies=``, ``seeds=`` and ``name=`` are short for ``compare.*``; ``preset=``
names the preset file. Every run of the comparison uses the same settings except
``fed.strategy`` and ``seed``; the data seed is fixed (:func:`run_config`).

Examples
--------
>>> cfg = load_compare_config(["preset=quick", "seeds=2", "strategies=[fedavg,local-only]"])
>>> cfg.compare.seeds, cfg.compare.strategies
(2, ['fedavg', 'local-only'])
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from shoal.config import ConfigError, ShoalConfig, load_config
from shoal.errors import check

DEFAULT_PRESET = "quick"
SHORTHANDS = {
    "strategies": "compare.strategies",
    "seeds": "compare.seeds",
    "name": "compare.name",
    "strategy": "fed.strategy",
    "devices": "fed.devices",
    "rounds": "fed.rounds",
    "fraction": "fed.fraction",
    "model": "model.name",
}
"""``key=value`` overrides that name a field elsewhere: ``seeds=3`` → ``compare.seeds``."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class CompareSection:
    """What to compare and where the report goes (the ``compare:`` section)."""

    strategies: list[str] = field(default_factory=list)
    """Registered strategies to compare, in table order (empty = every registered one)."""
    seeds: int = 3
    """Seeds per strategy: ``seed``, ``seed + 1``, ... (model init and device sampling)."""
    name: str = ""
    """Report folder ``<reports>/<name>/`` (empty = ``compare-<preset>``). A rerun with the
    same name skips the strategy × seed runs that finished."""
    reports: str = "reports"
    """Parent folder of reports."""
    baseline: str = ""
    """Reference of the paired (seed by seed) differences in the report (empty =
    ``cloud-only`` when compared, else the first strategy)."""
    confidence: float = 0.95
    """Confidence level of the Student-t intervals over seeds."""
    html: bool = True
    """Also write ``report.html`` (the same report, images embedded)."""

    def __post_init__(self) -> None:
        check(self.seeds >= 1, "compare.seeds", f"must be >= 1, got {self.seeds}")
        check(
            0.5 <= self.confidence < 1.0,
            "compare.confidence",
            f"must be in [0.5, 1), got {self.confidence}",
        )
        dup = sorted({s for s in self.strategies if self.strategies.count(s) > 1})
        check(not dup, "compare.strategies", f"lists {dup} more than once")
        check(
            not self.name or bool(_NAME.match(self.name)),
            "compare.name",
            f"must be a folder name (letters, digits, '.', '_', '-'), got {self.name!r}",
        )


@dataclass
class CompareConfig(ShoalConfig):
    """A :class:`ShoalConfig` (the settings every run shares) with the ``compare:`` section."""

    compare: CompareSection = field(default_factory=CompareSection)


def preset_file(name: str) -> Path:
    """``experiments/configs/compare-<name>.yaml``; a ``ConfigError`` names the presets."""
    configs = resources.files("shoal.experiments") / "configs"
    f = configs / f"compare-{name}.yaml"
    if not f.is_file():
        known = sorted(
            p.name.removeprefix("compare-").removesuffix(".yaml")
            for p in configs.iterdir()
            if p.name.startswith("compare-") and p.name.endswith(".yaml")
        )
        raise ConfigError(f"no compare preset {name!r}; presets: {', '.join(known)}")
    return Path(str(f))


def _expand(item: str) -> str:
    key, eq, value = item.partition("=")
    if not eq:
        return item
    key = SHORTHANDS.get(key, key)
    if key == "compare.strategies" and not value.startswith("["):
        value = f"[{value}]"  # strategies=fedavg,local-only is accepted too
    return f"{key}={value}"


def split_preset(overrides: list[str]) -> tuple[str, list[str]]:
    """(preset name, the other overrides, shorthands expanded)."""
    preset, rest = DEFAULT_PRESET, []
    for item in overrides:
        key, eq, value = item.partition("=")
        if eq and key == "preset":
            check(bool(value), "preset", "needs a name, e.g. preset=quick")
            preset = value
        else:
            rest.append(_expand(item))
    return preset, rest


def load_compare_config(
    overrides: list[str] | None = None, files: list[str | Path] | None = None
) -> CompareConfig:
    """The validated comparison config: preset, then ``files``, then ``overrides``.

    Parameters
    ----------
    overrides : list of str
        ``key=value`` items; ``preset=<name>`` picks the preset (default ``quick``).
    files : list of path, optional
        YAML files merged after the preset.

    Raises
    ------
    ConfigError
        Unknown preset or key, a value of the wrong type or out of range.
    """
    preset, rest = split_preset(list(overrides or []))
    cfg = load_config([preset_file(preset), *(files or [])], rest, schema=CompareConfig)
    if not cfg.compare.name:
        cfg.compare.name = f"compare-{preset}"
    return cfg


def base_config(cfg: CompareConfig) -> ShoalConfig:
    """The shared :class:`ShoalConfig` of a comparison (without the ``compare:`` section)."""
    return ShoalConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(ShoalConfig)})


def strategy_names(cfg: CompareConfig) -> list[str]:
    """The strategies to compare: ``compare.strategies`` or every registered one.

    Raises
    ------
    ValueError
        A name that is not a registered strategy (the message lists the registered ones).
    """
    import shoal.strategies  # noqa: F401  (registers the built-in strategies)
    from shoal.registry import STRATEGIES

    names = list(cfg.compare.strategies) or STRATEGIES.names()
    unknown = [s for s in names if s not in STRATEGIES]
    if unknown:
        raise ConfigError(
            f"config key 'compare.strategies': unknown strategies {unknown}; "
            f"registered: {', '.join(STRATEGIES.names())}"
        )
    return names


def seeds(cfg: ShoalConfig, n: int) -> list[int]:
    """The seeds of a comparison: ``cfg.seed .. cfg.seed + n - 1``."""
    return [cfg.seed + k for k in range(n)]


def run_config(base: ShoalConfig, strategy: str, seed: int) -> ShoalConfig:
    """One run of the comparison: only the strategy and the seed differ from ``base``.

    The data seed is fixed to ``base.data_seed`` (or ``base.seed`` when unset), so every
    strategy and seed sees the same data and splits; the seed drives model initialisation
    and device sampling, which is therefore the same across strategies for one seed.
    """
    data_seed = base.data_seed if base.data_seed is not None else base.seed
    fed = dataclasses.replace(base.fed, strategy=strategy, resume=None)
    return dataclasses.replace(base, seed=seed, data_seed=data_seed, fed=fed)
