"""Typed configuration: YAML files + ``key=value`` overrides, validated once into dataclasses.

Every run is described by one :class:`ShoalConfig`. It is built by :func:`load_config` from
(in order) the dataclass defaults, zero or more YAML files, and an OmegaConf dotlist of
command-line overrides. Unknown keys and values of the wrong type raise :class:`ConfigError`
(a ``ValueError``) naming the key and the expected type; range checks live in each
dataclass's ``__post_init__``. Library code receives the typed objects, never a raw dict.

Examples
--------
>>> cfg = load_config(overrides=["sim.users=50", "seed=3"])
>>> cfg.sim.users, cfg.seed
(50, 3)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from shoal.config_dp import DPConfig
from shoal.config_fed import FedConfig
from shoal.errors import ConfigError
from shoal.errors import check as _check

__all__ = ["ConfigError", "DPConfig", "FedConfig", "ShoalConfig", "load_config", "to_yaml"]


@dataclass
class SimConfig:
    """Waterfall-feed simulator (see :mod:`shoal.datasets.simulator`)."""

    users: int = 2000
    """Number of simulated users (devices). Scales to 100,000+."""
    items: int = 20000
    """Catalog size."""
    categories: int = 50
    brands: int = 1000
    price_levels: int = 10
    age_levels: int = 8
    latent_dim: int = 16
    days: float = 30.0
    """Length of the logged period; session start times are spread over it."""
    sessions_mean: float = 3.0
    """Mean sessions per user; activity is long-tailed (log-normal around this mean)."""
    sessions_sigma: float = 1.2
    """Log-normal shape of sessions per user: larger = longer tail."""
    sessions_max: int = 200
    candidates: int = 100
    """Candidates the cloud ranks per page."""
    page_size: int = 50
    """Items exposed per page."""
    max_pages: int = 4
    """Pages per session at most."""
    trigger_exposures: int = 5
    """A rerank request fires after this many exposures without a click (EdgeRec's k)."""
    target_ctr: float = 0.045
    """Overall click-through rate the simulator calibrates its click bias to."""
    interest_alpha: float = 0.3
    """Dirichlet concentration of users' long-term category interests (small = non-IID)."""
    intent_weight: float = 4.0
    """Weight of the in-session short-term intent in the click utility."""
    intent_drift: float = 0.03
    """Per-exposure probability that the session's intent jumps to a new category."""
    idiosyncrasy: float = 1.0
    """Scale of per-user price / brand / age sensitivities (of either sign)."""
    fatigue: float = 0.12
    """Utility penalty per earlier exposure of the same category in the session."""
    position_bias: float = 0.3
    """Examination probability at page position j (0-based) is ``(1 + j) ** -position_bias``."""
    leave_prob: float = 0.02
    """Probability of leaving the session after an exposure without a click."""
    continue_prob: float = 0.7
    """Probability of scrolling on to the next page at the end of a page."""

    def __post_init__(self) -> None:
        for k in ("users", "items", "categories", "brands", "price_levels", "age_levels"):
            _check(getattr(self, k) >= 1, f"sim.{k}", f"must be >= 1, got {getattr(self, k)}")
        _check(self.items >= self.candidates, "sim.items", "must be >= sim.candidates")
        _check(
            1 <= self.page_size <= self.candidates,
            "sim.page_size",
            f"must be in [1, sim.candidates={self.candidates}], got {self.page_size}",
        )
        _check(self.trigger_exposures >= 1, "sim.trigger_exposures", "must be >= 1")
        _check(0.0 < self.target_ctr < 0.5, "sim.target_ctr", "must be in (0, 0.5)")
        _check(self.sessions_mean >= 1.0, "sim.sessions_mean", "must be >= 1")
        _check(self.sessions_max >= 1, "sim.sessions_max", "must be >= 1")
        _check(self.max_pages >= 1, "sim.max_pages", "must be >= 1")
        _check(0.0 <= self.intent_drift <= 1.0, "sim.intent_drift", "must be in [0, 1]")
        _check(self.interest_alpha > 0, "sim.interest_alpha", "must be > 0")
        _check(self.days > 0, "sim.days", "must be > 0")
        _check(self.position_bias >= 0, "sim.position_bias", "must be >= 0")
        _check(0.0 <= self.leave_prob < 1.0, "sim.leave_prob", "must be in [0, 1)")
        _check(0.0 <= self.continue_prob <= 1.0, "sim.continue_prob", "must be in [0, 1]")


@dataclass
class KuaiRandConfig:
    """KuaiRand random-exposure log (see :mod:`shoal.datasets.kuairand`)."""

    log_file: str = "log_random_4_22_to_5_08_1k_users_0-798.csv"
    """Log CSV, relative to ``path`` unless absolute."""
    features_file: str = "video_features_basic.csv"
    """Video features CSV, relative to ``path`` unless absolute."""
    candidates: int = 10
    """K: a request takes the user's next K exposures as candidates (windows do not overlap,
    so no labelled exposure belongs to two requests)."""

    def __post_init__(self) -> None:
        _check(self.candidates >= 1, "kuairand.candidates", "must be >= 1")


@dataclass
class SplitConfig:
    """Per-user time split of requests into cloud history / device-fresh / test."""

    cloud: float = 0.5
    device: float = 0.3
    test: float = 0.2

    def __post_init__(self) -> None:
        for k in ("cloud", "device", "test"):
            _check(0.0 <= getattr(self, k) <= 1.0, f"split.{k}", "must be in [0, 1]")
        _check(self.test > 0, "split.test", "must be > 0 (every user needs a test request)")
        total = self.cloud + self.device + self.test
        _check(abs(total - 1.0) < 1e-6, "split", f"cloud + device + test must be 1, got {total}")


@dataclass
class SequenceConfig:
    """Behaviour sequence caps."""

    ie_len: int = 50
    """m: item-exposure sequence length cap."""
    ipv_len: int = 20
    """n: item-page-view sequence length cap."""

    def __post_init__(self) -> None:
        _check(self.ie_len >= 1, "seq.ie_len", "must be >= 1")
        _check(self.ipv_len >= 1, "seq.ipv_len", "must be >= 1")


@dataclass
class ActivityConfig:
    """Activity buckets (head / torso / tail) by the number of logged interactions of a user."""

    quantiles: list[float] = field(default_factory=lambda: [0.5, 0.9])
    """Users below the first quantile of interactions are tail, above the second are head."""

    def __post_init__(self) -> None:
        q = list(self.quantiles)
        _check(len(q) == 2, "activity.quantiles", f"needs two values, got {q}")
        _check(0.0 < q[0] < q[1] < 1.0, "activity.quantiles", f"needs 0 < q0 < q1 < 1, got {q}")


@dataclass
class ModelConfig:
    """Reranker model (``shoal.client.models``); unused fields are ignored by a model."""

    name: str = "crban-hubsm"
    """Registered model: dnn-rank, dlcm, crban-hubsm-ie, crban-hubsm-ipv, crban-huism,
    crban-hubsm (= edgerec, the full EdgeRec model) or kuaishou."""
    field_dim: int = 8
    """Cloud part: embedding size of each categorical item field."""
    id_dim: int = 0
    """Cloud part: item-id embedding size (0 = none, as in EdgeRec, whose items are described
    by p1-p7 only). On the simulator a 16-dim id table memorised clicks (train loss 0.08 vs
    0.13) and lost 0.03 test GAUC with DNN-rank."""
    hidden: int = 32
    """GRU hidden units and item-encoding size."""
    gru_layers: int = 3
    attention: int = 32
    """Bahdanau attention units."""
    mlp: list[int] = field(default_factory=lambda: [32])
    """Hidden sizes of the scoring MLP."""
    action_dim: int = 4
    """Embedding size of each bucketized behaviour-action feature (device side)."""
    time_dim: int = 8
    """Embedding size of the time-since-behaviour bucket."""
    dropout: float = 0.0
    attention_mass: bool = True
    """EdgeRec: also give the head each behaviour attention's mass log(1 + Σ exp(score)),
    i.e. how much of the sequence matches the candidate (false = the paper's softmax context
    alone). HUBSM branches only: HUISM's DIN attention is unnormalised already."""
    attention_match: bool = False
    """EdgeRec: add a bilinear match term q^T M k to the Bahdanau attention score of HUBSM
    branches (false = the paper's additive score alone; HUISM's DIN unit has q ⊙ k)."""
    field_match: bool = True
    """EdgeRec: add a cosine match of the candidate's and each behaviour's field embeddings
    (category, brand, ...; one learned weight per field) to the behaviour attention score
    (false = the paper's score alone; docs/models.md says why it is on)."""
    match_fields: list[str] | None = None
    """EdgeRec: the item fields the field match compares (names from the dataset schema, plus
    ``item_id`` when id_dim > 0). null = every field with fewer distinct values than half the
    catalog: an identity-like field (KuaiRand's author, 6,341 values for 7,350 videos; the
    item id) lets the match memorise per-item clicks (measured: docs/results.md)."""
    query: str = "list"
    """EdgeRec HUBSM attention query: list (the candidate's list-GRU encoding, as the paper) or
    item (its pointwise encoding). HUISM's DIN query is the candidate's projected embedding."""
    heads: int = 4
    """kuaishou: target-attention heads (must divide ``hidden``)."""
    experts: int = 4
    """kuaishou: MMoE experts."""
    tasks: list[str] = field(default_factory=lambda: ["click", "long_view", "like", "favorite"])
    """kuaishou: label heads besides the derived has-next task (those the dataset lacks are
    dropped; click is always first)."""
    beam: int = 4
    """kuaishou: beam width of the next-slot search."""
    beam_depth: int = 10
    """kuaishou: slots chosen by beam search; the rest follow in reward order."""
    reward_alpha: float = 1.0
    """kuaishou: ListReward weight of the effective-view probability."""
    reward_beta: float = 0.5
    """kuaishou: ListReward weight of the like probability."""

    def __post_init__(self) -> None:
        for k in ("hidden", "gru_layers", "attention", "action_dim", "time_dim", "heads"):
            _check(getattr(self, k) >= 1, f"model.{k}", f"must be >= 1, got {getattr(self, k)}")
        for k in ("field_dim", "id_dim"):
            _check(getattr(self, k) >= 0, f"model.{k}", f"must be >= 0, got {getattr(self, k)}")
        _check(self.field_dim + self.id_dim > 0, "model.field_dim", "field_dim + id_dim must > 0")
        _check(all(h >= 1 for h in self.mlp), "model.mlp", f"sizes must be >= 1, got {self.mlp}")
        _check(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        _check(self.query in ("list", "item"), "model.query", f"list or item, got {self.query!r}")
        _check(self.hidden % self.heads == 0, "model.heads", "must divide model.hidden")
        _check(self.experts >= 1 and self.beam >= 1, "model.experts", "experts, beam must be >= 1")
        _check(self.beam_depth >= 0, "model.beam_depth", "must be >= 0")


@dataclass
class TrainConfig:
    """Centralized (cloud) training: Adam, early stopping on a validation split."""

    lr: float = 0.005
    batch: int = 128
    """Requests per mini-batch (each carries its whole candidate list)."""
    epochs: int = 20
    """Maximum epochs."""
    patience: int = 3
    """Stop after this many epochs without a better validation GAUC."""
    val_fraction: float = 0.1
    """Share of the training pages held out for early stopping (whole pages, seeded)."""
    per_page: int = 1
    """Requests drawn per page (slate) for each epoch, fresh every epoch (0 = all requests).
    Requests of one page share their labelled candidates (7.4 requests per page on the
    default simulator), so a full pass shows each label several times with near-identical
    contexts; one request per page per epoch trains faster and overfits less."""
    listwise: float = 1.0
    """Weight of a listwise softmax loss on clicks added to the pointwise cross-entropy
    (0 = EdgeRec's pointwise loss alone). On the simulator it raised test GAUC of DLCM from
    0.579 to 0.588 and of the full model from 0.578 to 0.588 (docs/results.md)."""
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    """Max gradient L2 norm (0 = no clipping)."""
    eval_batch: int = 512
    threads: int = 1
    """torch intra-op threads (0 = torch's default). One is fastest for these small GRUs: on
    2 cores a full-model step took 0.36 s with 1 thread and 1.8 s with 2."""
    max_requests: int = 0
    """Cap on training requests, sampled with the seed (0 = all)."""
    device: str = "cpu"
    """torch device to train on: cpu, cuda, or auto (cuda when available)."""

    def __post_init__(self) -> None:
        _check(self.lr > 0, "train.lr", "must be > 0")
        for k in ("batch", "epochs", "eval_batch"):
            _check(getattr(self, k) >= 1, f"train.{k}", f"must be >= 1, got {getattr(self, k)}")
        _check(self.patience >= 1, "train.patience", "must be >= 1")
        _check(0.0 < self.val_fraction < 1.0, "train.val_fraction", "must be in (0, 1)")
        for k in ("weight_decay", "grad_clip", "threads", "max_requests", "per_page", "listwise"):
            _check(getattr(self, k) >= 0, f"train.{k}", "must be >= 0")
        _check(
            self.device in ("cpu", "cuda", "auto") or self.device.startswith("cuda:"),
            "train.device",
            f"must be cpu, cuda, cuda:<n> or auto, got {self.device!r}",
        )


DATASETS = ("sim", "kuairand")


@dataclass
class ShoalConfig:
    """Top-level configuration of a Shoal run."""

    seed: int = 0
    """Seed of everything random in a run (model init, batching, sampling)."""
    data_seed: int | None = None
    """Seed of the simulated data (None = ``seed``); fix it to vary runs on identical data."""
    dataset: str = "sim"
    """Which dataset: ``sim`` (built-in simulator) or ``kuairand``."""
    path: str | None = None
    """Where the data lies: kuairand's folder (or log CSV); for sim, a saved dataset folder."""
    sim: SimConfig = field(default_factory=SimConfig)
    kuairand: KuaiRandConfig = field(default_factory=KuaiRandConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    seq: SequenceConfig = field(default_factory=SequenceConfig)
    activity: ActivityConfig = field(default_factory=ActivityConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    out_dir: str = "runs"
    """Parent folder of run directories."""

    def __post_init__(self) -> None:
        _check(
            self.dataset in DATASETS, "dataset", f"must be one of {DATASETS}, got {self.dataset!r}"
        )
        _check(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        _check(self.data_seed is None or self.data_seed >= 0, "data_seed", "must be >= 0 or null")


def _field_type(cfg_cls: type, key: str) -> Any:
    """The annotated type of a dotted key in the dataclass tree (None if unknown)."""
    tp: Any = cfg_cls
    for part in key.split("."):
        name, _, index = part.partition("[")
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(name)
        if index and typing.get_args(tp):  # an element of list[float] is a float
            tp = typing.get_args(tp)[0]
    return tp


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _first_key(layer: Any) -> str:
    """Best guess of the offending key when OmegaConf does not say (a scalar for a section)."""
    try:
        return str(next(iter(layer.keys())))
    except Exception:
        return "?"


def _valid_keys(cfg_cls: type, key: str) -> list[str]:
    parent = key.rpartition(".")[0]
    cls = _field_type(cfg_cls, parent) if parent else cfg_cls
    return [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []


def load_config(
    files: list[str | Path] | None = None,
    overrides: list[str] | None = None,
    schema: type = ShoalConfig,
) -> Any:
    """Build a validated config from YAML files and ``key=value`` overrides.

    Parameters
    ----------
    files : list of path, optional
        YAML files merged in order over the dataclass defaults.
    overrides : list of str, optional
        OmegaConf dotlist, e.g. ``["sim.users=100", "dataset=kuairand"]``; applied last.
    schema : type
        Root dataclass (default :class:`ShoalConfig`).

    Returns
    -------
    schema instance
        The typed, validated configuration.

    Raises
    ------
    ConfigError
        Unknown key, value of the wrong type, malformed override, unreadable YAML, or a
        value out of range; the message names the key and what was expected.
    """
    base = OmegaConf.structured(schema)
    layers = []
    for f in files or []:
        p = Path(f)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            layers.append((str(p), OmegaConf.load(p)))
        except Exception as e:  # yaml errors come in several types
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from e
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    if overrides:
        try:
            layers.append(("command line", OmegaConf.from_dotlist(list(overrides))))
        except OmegaConfBaseException as e:
            raise ConfigError(f"cannot parse overrides {overrides}: {e}") from e
    merged = base
    for source, layer in layers:
        try:
            merged = OmegaConf.merge(merged, layer)
        except ConfigKeyError as e:
            valid = _valid_keys(schema, e.full_key or "")
            raise ConfigError(
                f"unknown config key '{e.full_key}' (from {source}); "
                f"valid keys here: {', '.join(valid)}"
            ) from None
        except ValidationError as e:
            key = e.full_key or _first_key(layer)
            expected = _type_name(_field_type(schema, key))
            raise ConfigError(
                f"config key '{key}' (from {source}) expects {expected}: {str(e).splitlines()[0]}"
            ) from None
        except (OmegaConfBaseException, TypeError) as e:
            raise ConfigError(f"{source}: not a mapping of config keys ({e})") from None
    try:
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid configuration: {str(e).splitlines()[0]}") from None


def to_yaml(cfg: Any) -> str:
    """Resolved configuration as YAML text (what ``--show-config`` prints and runs save)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
