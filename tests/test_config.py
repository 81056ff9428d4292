"""Typed configuration: defaults, YAML + override precedence, error messages, YAML round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from shoal.config import (
    ActivityConfig,
    ConfigError,
    KuaiRandConfig,
    SequenceConfig,
    ShoalConfig,
    SimConfig,
    SplitConfig,
    load_config,
    to_yaml,
)


def _yaml(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _error(files: list[Path] | None = None, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(files=files, overrides=overrides)
    return str(info.value)


# ---------------------------------------------------------------------------------- defaults
def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError, match=r"sim\.usr"):
        load_config(overrides=["sim.usr=3"])


def test_defaults() -> None:
    cfg = load_config()
    assert isinstance(cfg, ShoalConfig)
    assert cfg == ShoalConfig()
    assert (cfg.seed, cfg.dataset, cfg.path, cfg.out_dir) == (0, "sim", None, "runs")
    assert isinstance(cfg.sim, SimConfig) and isinstance(cfg.split, SplitConfig)
    assert isinstance(cfg.kuairand, KuaiRandConfig) and isinstance(cfg.seq, SequenceConfig)
    assert isinstance(cfg.activity, ActivityConfig)
    assert (cfg.sim.users, cfg.sim.items, cfg.sim.candidates, cfg.sim.page_size) == (
        2000,
        20000,
        100,
        50,
    )
    assert (cfg.split.cloud, cfg.split.device, cfg.split.test) == (0.5, 0.3, 0.2)
    assert (cfg.seq.ie_len, cfg.seq.ipv_len) == (50, 20)
    assert cfg.activity.quantiles == [0.5, 0.9]
    assert cfg.kuairand.candidates == 10


def test_defaults_are_not_shared_between_loads() -> None:
    a = load_config()
    a.activity.quantiles.append(0.99)
    assert load_config().activity.quantiles == [0.5, 0.9]


# ----------------------------------------------------------------------------- precedence
def test_yaml_files_then_overrides_precedence(tmp_path: Path) -> None:
    f1 = _yaml(tmp_path, "one.yaml", "seed: 1\nsim:\n  users: 10\n  items: 500\n")
    f2 = _yaml(tmp_path, "two.yaml", "sim:\n  users: 20\nsplit:\n  cloud: 0.6\n  device: 0.2\n")
    cfg = load_config(files=[f1, f2], overrides=["sim.users=30", "dataset=kuairand"])
    assert cfg.sim.users == 30  # override beats both files
    assert cfg.sim.items == 500  # only in the first file
    assert cfg.seed == 1  # first file, untouched later
    assert cfg.dataset == "kuairand"
    assert (cfg.split.cloud, cfg.split.device, cfg.split.test) == (0.6, 0.2, 0.2)
    assert cfg.sim.candidates == 100  # default survives
    # without the override the later file wins over the earlier one
    assert load_config(files=[f1, f2]).sim.users == 20
    assert load_config(files=[f2, f1]).sim.users == 10


def test_later_override_wins_and_values_are_converted() -> None:
    cfg = load_config(overrides=["sim.users=5", "sim.users=6", "sim.days=3", "path=/data/x"])
    assert cfg.sim.users == 6
    assert cfg.sim.days == 3.0 and isinstance(cfg.sim.days, float)
    assert cfg.path == "/data/x"
    assert load_config(overrides=["activity.quantiles=[0.2,0.8]"]).activity.quantiles == [
        0.2,
        0.8,
    ]


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(files=[_yaml(tmp_path, "empty.yaml", "")]) == ShoalConfig()


# ---------------------------------------------------------------------------- unknown keys
def test_unknown_nested_key_names_dotted_key_and_lists_valid_keys() -> None:
    msg = _error(overrides=["sim.usr=3"])
    assert "'sim.usr'" in msg
    for key in ("users", "items", "page_size", "continue_prob"):
        assert key in msg
    assert "seed" not in msg  # valid keys of the sim section, not of the root


def test_unknown_top_level_key_lists_root_keys() -> None:
    msg = _error(overrides=["usr=1"])
    assert "'usr'" in msg
    for key in ("seed", "dataset", "path", "sim", "kuairand", "split", "seq", "activity"):
        assert key in msg


def test_unknown_key_in_yaml_names_key_and_file(tmp_path: Path) -> None:
    f = _yaml(tmp_path, "bad.yaml", "seq:\n  ie_length: 3\n")
    msg = _error(files=[f])
    assert "'seq.ie_length'" in msg
    assert str(f) in msg
    assert "ie_len" in msg and "ipv_len" in msg


# ------------------------------------------------------------------------------ wrong type
def test_wrong_type_override_names_key_and_type() -> None:
    msg = _error(overrides=["sim.users=abc"])
    assert "sim.users" in msg
    assert "int" in msg
    msg = _error(overrides=["split.cloud=abc"])
    assert "split.cloud" in msg and "float" in msg
    msg = _error(overrides=["sim.users=1.5"])
    assert "sim.users" in msg and "int" in msg


def test_wrong_type_in_yaml_names_key_and_file(tmp_path: Path) -> None:
    f = _yaml(tmp_path, "t.yaml", "seed: true\n")
    msg = _error(files=[f])
    assert "'seed'" in msg and "int" in msg and str(f) in msg


def test_wrong_type_of_list_element_names_expected_type() -> None:
    # The message format is "config key 'K' (from S) expects T: ...". For a list element the
    # key is 'activity.quantiles[0]' and the expected type is float.
    msg = _error(overrides=["activity.quantiles=[a,b]"])
    assert "activity.quantiles" in msg
    assert "expects float" in msg


def test_scalar_for_a_section_is_a_config_error() -> None:
    # `sim` is a section (SimConfig); giving it a number is a value of the wrong type.
    msg = _error(overrides=["sim=5"])
    assert "sim" in msg.lower()


def test_yaml_whose_top_level_is_not_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    f = _yaml(tmp_path, "list.yaml", "- 1\n- 2\n")
    msg = _error(files=[f])
    assert str(f) in msg


# ---------------------------------------------------------------------------- range checks
@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["split.cloud=0.6"], "'split'"),  # 0.6 + 0.3 + 0.2 = 1.1
        (["split.cloud=0.1", "split.device=0.1"], "'split'"),  # sums to 0.4
        (["split.cloud=1.5"], "'split.cloud'"),
        (["split.test=0", "split.cloud=0.7"], "'split.test'"),
        (["dataset=foo"], "'dataset'"),
        (["activity.quantiles=[0.9,0.5]"], "'activity.quantiles'"),
        (["activity.quantiles=[0.5]"], "'activity.quantiles'"),
        (["activity.quantiles=[0.0,0.5]"], "'activity.quantiles'"),
        (["activity.quantiles=[0.5,1.0]"], "'activity.quantiles'"),
        (["sim.page_size=500"], "'sim.page_size'"),
        (["sim.items=50"], "'sim.items'"),  # fewer items than candidates
        (["sim.users=0"], "'sim.users'"),
        (["seq.ie_len=0"], "'seq.ie_len'"),
        (["kuairand.candidates=0"], "'kuairand.candidates'"),
        (["seed=-1"], "'seed'"),
        (["data_seed=-2"], "'data_seed'"),
        (["model.heads=5"], "'model.heads'"),  # does not divide hidden=32
        (["model.hidden=0"], "'model.hidden'"),
        (["model.field_dim=0", "model.id_dim=0"], "'model.field_dim'"),
        (["model.mlp=[32,0]"], "'model.mlp'"),
        (["model.dropout=1.0"], "'model.dropout'"),
        (["model.query=candidate"], "'model.query'"),
        (["train.lr=0"], "'train.lr'"),
        (["train.batch=0"], "'train.batch'"),
        (["train.val_fraction=1.0"], "'train.val_fraction'"),
        (["train.listwise=-1"], "'train.listwise'"),
        (["train.per_page=-1"], "'train.per_page'"),
        (["train.device=tpu"], "'train.device'"),
    ],
)
def test_range_checks_name_the_key(overrides: list[str], key: str) -> None:
    msg = _error(overrides=overrides)
    assert key in msg


def test_dataset_error_lists_allowed_values() -> None:
    msg = _error(overrides=["dataset=movielens"])
    assert "sim" in msg and "kuairand" in msg and "movielens" in msg


def test_split_sum_reports_the_total() -> None:
    msg = _error(overrides=["split.cloud=0.1", "split.device=0.1"])
    assert "0.4" in msg


def test_range_check_from_yaml(tmp_path: Path) -> None:
    f = _yaml(tmp_path, "r.yaml", "split:\n  cloud: 0.2\n  device: 0.2\n  test: 0.2\n")
    assert "'split'" in _error(files=[f])
    ok = _yaml(tmp_path, "ok.yaml", "split:\n  cloud: 0.2\n  device: 0.2\n  test: 0.6\n")
    assert load_config(files=[ok]).split == SplitConfig(0.2, 0.2, 0.6)


# ---------------------------------------------------------------------- malformed inputs
@pytest.mark.parametrize("item", ["sim.users", "seed", "sim"])
def test_override_without_equals(item: str) -> None:
    msg = _error(overrides=[item])
    assert repr(item) in msg
    assert "key=value" in msg


def test_missing_yaml_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    msg = _error(files=[missing])
    assert "not found" in msg and str(missing) in msg


def test_yaml_path_that_is_a_folder(tmp_path: Path) -> None:
    msg = _error(files=[tmp_path])
    assert str(tmp_path) in msg


def test_invalid_yaml(tmp_path: Path) -> None:
    f = _yaml(tmp_path, "broken.yaml", "sim:\n  users: [1, 2\n")
    msg = _error(files=[f])
    assert "not valid YAML" in msg and str(f) in msg


# ------------------------------------------------------------------------------ to_yaml
def test_to_yaml_round_trip_of_defaults(tmp_path: Path) -> None:
    cfg = load_config()
    f = _yaml(tmp_path, "dump.yaml", to_yaml(cfg))
    assert load_config(files=[f]) == cfg


def test_to_yaml_round_trip_of_non_defaults(tmp_path: Path) -> None:
    cfg = load_config(
        overrides=[
            "seed=3",
            "dataset=kuairand",
            "path=/data/kr",
            "sim.users=50",
            "sim.target_ctr=0.07",
            "split.cloud=0.6",
            "split.device=0.1",
            "split.test=0.3",
            "activity.quantiles=[0.25,0.75]",
            "kuairand.candidates=7",
            "out_dir=elsewhere",
        ]
    )
    text = to_yaml(cfg)
    assert "users: 50" in text and "seed: 3" in text
    back = load_config(files=[_yaml(tmp_path, "dump.yaml", text)])
    assert back == cfg
    assert dataclasses.asdict(back) == dataclasses.asdict(cfg)
    assert back.activity.quantiles == [0.25, 0.75] and back.path == "/data/kr"


def test_to_yaml_of_directly_built_dataclass(tmp_path: Path) -> None:
    cfg = ShoalConfig(seed=9, sim=SimConfig(users=7, items=300, candidates=30, page_size=10))
    back = load_config(files=[_yaml(tmp_path, "d.yaml", to_yaml(cfg))])
    assert back == cfg


def test_model_and_train_sections_parse_and_type_check() -> None:
    cfg = load_config(overrides=["model.name=dlcm", "model.mlp=[64,32]", "train.listwise=0"])
    assert (cfg.model.name, cfg.model.mlp, cfg.train.listwise) == ("dlcm", [64, 32], 0.0)
    assert "expects bool" in _error(overrides=["model.attention_mass=maybe"])
    assert "unknown config key 'train.lr_decay'" in _error(overrides=["train.lr_decay=1"])


def test_package_version_matches_pyproject() -> None:
    import tomllib
    from pathlib import Path

    import shoal

    meta = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert meta["project"]["version"] == shoal.__version__
