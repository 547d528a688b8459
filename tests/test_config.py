from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fl.config import config_from_dict, default_config, load_config
from fl.errors import ConfigError


def test_default_roundtrips_through_toml(tmp_path: Path) -> None:
    cfg = default_config()
    assert config_from_dict(tomllib.loads(cfg.to_toml())) == cfg
    p = tmp_path / "c.toml"
    p.write_text(cfg.to_toml())
    assert load_config(p) == cfg


def test_partial_file_keeps_defaults(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[data]\nname = "digits"\n[model]\nname = "cnn"\n[run]\nrounds = 3\n')
    cfg = load_config(p)
    assert (cfg.data.name, cfg.model.name, cfg.run.rounds) == ("digits", "cnn", 3)
    assert cfg.client == default_config().client


@pytest.mark.parametrize(
    ("raw", "key", "match"),
    [
        ({"server": {"strategy": "fedavgg"}}, "server.strategy", "allowed: fedavg, fedprox, fedsgd"),
        ({"data": {"name": "imagenet"}}, "data.name", "allowed: breast_cancer, digits"),
        ({"data": {"partition": "zipf"}}, "data.partition", "allowed: iid, dirichlet"),
        ({"data": {"num_clients": 0}}, "data.num_clients", ">= 1"),
        ({"data": {"alpha": 0.0}}, "data.alpha", "> 0"),
        ({"data": {"test_fraction": 1.0}}, "data.test_fraction", "< 1"),
        ({"client": {"epochs": "two"}}, "client.epochs", "integer"),
        ({"client": {"epochs": True}}, "client.epochs", "integer"),
        ({"client": {"lr": float("nan")}}, "client.lr", "finite"),
        ({"client": {"lr": 0}}, "client.lr", "> 0"),
        ({"client": {"lrr": 0.1}}, "client.lrr", "allowed keys in \\[client\\]"),
        ({"clients": {}}, "clients", "unknown section"),
        ({"model": {"hidden": [32, -1]}}, "model.hidden", "positive integers"),
        ({"data": {"standardize": 1}}, "data.standardize", "true or false"),
        ({"dropout": {"phase": "during"}}, "dropout.phase", "allowed: before_training, after_training"),
        ({"run": {"aggregation": "magic"}}, "run.aggregation", "allowed: plain"),
        ({"data": {"name": "mnist"}}, "data.root", "local files"),
        ({"data": {"name": "diabetes"}}, "data.partition", "allowed: iid, quantity_skew"),
        ({"model": {"name": "cnn"}}, "model.name", "image data"),
        ({"sampling": {"clients_per_round": 11}}, "sampling.clients_per_round", "exceeds"),
        ({"server": {"strategy": "fedprox"}}, "client.mu", "needs client.mu"),
        ({"data": 3}, "data", "must be a table"),
    ],
)
def test_errors_name_key_and_allowed_values(raw: dict[str, object], key: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        config_from_dict(raw)
    assert info.value.key == key
    assert f"'{key}'" in str(info.value)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[data\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_replace_validates() -> None:
    cfg = default_config().replace(run={"rounds": 4})
    assert cfg.run.rounds == 4
    with pytest.raises(ConfigError, match="run.rounds"):
        default_config().replace(run={"rounds": 0})
