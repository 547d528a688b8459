"""Experiment configuration: a TOML file validated at load time.

Every error names the dotted key and the allowed values, e.g. ``config key 'server.strategy': unknown
value 'fedavgg'; allowed: fedavg, fedprox, ...``. Unknown sections and keys are errors, not ignored.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fl.errors import ConfigError

_SPEC = "spec"


def _opt(default: Any, *, choices: tuple[Any, ...] | None = None, lo: float | None = None,
         hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Any:
    spec = {"choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: tuple(default), metadata={_SPEC: spec})
    return field(default=default, metadata={_SPEC: spec})


# Names are duplicated here (not imported) so that loading a config never imports torch.
_DATASETS = ("breast_cancer", "digits", "diabetes", "mnist", "cifar10")
_PARTITIONS = ("iid", "dirichlet", "shards", "quantity_skew")
_MODELS = ("logreg", "mlp", "cnn")
_STRATEGIES = ("fedavg", "fedprox", "fedsgd", "fedadam", "fedyogi", "fedadagrad")


@dataclass(frozen=True)
class DataConfig:
    name: str = _opt("breast_cancer", choices=_DATASETS)
    root: str = _opt("")  # directory of local files, for mnist / cifar10
    num_clients: int = _opt(10, lo=1)
    partition: str = _opt("dirichlet", choices=_PARTITIONS)
    alpha: float = _opt(0.5, lo=0, lo_open=True)
    labels_per_client: int = _opt(2, lo=1)
    test_fraction: float = _opt(0.2, lo=0, hi=1, lo_open=True, hi_open=True)
    standardize: bool = _opt(True)


@dataclass(frozen=True)
class ModelConfig:
    name: str = _opt("logreg", choices=_MODELS)
    hidden: tuple[int, ...] = _opt((32,))
    activation: str = _opt("relu", choices=("relu", "sigmoid", "tanh"))  # mlp and cnn


@dataclass(frozen=True)
class ClientConfig:
    epochs: int = _opt(2, lo=1)
    batch_size: int = _opt(16, lo=0)
    lr: float = _opt(0.05, lo=0, lo_open=True)
    momentum: float = _opt(0.0, lo=0, hi=1, hi_open=True)
    weight_decay: float = _opt(0.0, lo=0)
    mu: float = _opt(0.0, lo=0)
    clip_norm: float = _opt(0.0, lo=0)  # > 0: clip each update to this L2 norm before sending (no noise)
    dpsgd_noise_multiplier: float = _opt(0.0, lo=0)  # > 0: clients train with DP-SGD (sample-level DP)
    dpsgd_max_grad_norm: float = _opt(1.0, lo=0, lo_open=True)  # per-example gradient clip of DP-SGD
    dpsgd_delta: float = _opt(1e-5, lo=0, hi=1, lo_open=True, hi_open=True)
    dpsgd_accountant: str = _opt("rdp", choices=("rdp", "pld"))


@dataclass(frozen=True)
class ServerConfig:
    strategy: str = _opt("fedavg", choices=_STRATEGIES)
    lr: float = _opt(0.0, lo=0)  # 0 = the strategy's default (1 for FedAvg, client lr for FedSGD, 0.01 FedOpt)
    beta1: float = _opt(0.9, lo=0, hi=1, hi_open=True)
    beta2: float = _opt(0.99, lo=0, hi=1, hi_open=True)
    tau: float = _opt(1e-3, lo=0, lo_open=True)
    weighting: str = _opt("examples", choices=("examples", "uniform"))


@dataclass(frozen=True)
class SamplingConfig:
    method: str = _opt("fixed", choices=("fixed", "poisson"))
    clients_per_round: int = _opt(0, lo=0)  # 0 = every client
    rate: float = _opt(1.0, lo=0, hi=1, lo_open=True)


@dataclass(frozen=True)
class DropoutConfig:
    rate: float = _opt(0.0, lo=0, hi=1, hi_open=True)
    phase: str = _opt("before_training", choices=("before_training", "after_training"))


@dataclass(frozen=True)
class RunConfig:
    rounds: int = _opt(30, lo=1)
    seed: int = _opt(0, lo=0)
    aggregation: str = _opt("plain", choices=("plain", "secagg", "secagg+", "ckks"))
    eval_every: int = _opt(1, lo=1)
    checkpoint_every: int = _opt(1, lo=1)
    centralized_baseline: bool = _opt(True)
    centralized_epochs: int = _opt(60, lo=1)
    torch_threads: int = _opt(1, lo=0)  # intra-op threads for local training; 0 = torch's default


@dataclass(frozen=True)
class SecAggConfig:
    """Secure aggregation parameters (used when run.aggregation is "secagg" or "secagg+")."""

    clip_range: float = _opt(1.0, lo=0, lo_open=True)  # per-coordinate encoding range of an update
    scale_bits: int = _opt(20, lo=0, hi=40)  # fixed-point resolution 2^-scale_bits
    headroom_bits: int = _opt(2, lo=0, hi=16)  # extra modulus bits that catch masks left in a sum
    threshold_fraction: float = _opt(2 / 3, lo=0.5, hi=1, lo_open=True)  # SecAgg: t = ceil(fraction * n)
    target_dropout: float = _opt(0.1, lo=0, hi=0.5, hi_open=True)  # SecAgg+: dropout rate k and t must survive
    corrupt_fraction: float = _opt(0.05, lo=0, hi=0.5, hi_open=True)  # SecAgg+: colluding clients tolerated
    active: bool = _opt(False)  # signed keys + consistency round (active-adversary variant)
    max_weight: float = _opt(0.0, lo=0)  # public bound on n_k; 0 = the largest client training set


@dataclass(frozen=True)
class CKKSConfig:
    """CKKS homomorphic aggregation parameters (used when run.aggregation is "ckks")."""

    preset: str = _opt("compact", choices=("compact", "add_only", "scalar_mul"))
    max_abs: float = _opt(1.0, lo=0, lo_open=True)  # per-coordinate clip of an update (CKKS range)
    flood: bool = _opt(True)  # noise-flood decryptions that leave the key holder (IND-CPA^D)
    flood_security_bits: int = _opt(40, lo=20, hi=128)
    max_weight: float = _opt(0.0, lo=0)  # public bound on n_k; 0 = the largest client training set


@dataclass(frozen=True)
class CompressionConfig:
    """Client-side update compression, applied after DP clipping and before secure aggregation."""

    method: str = _opt("none", choices=("none", "topk", "quantize"))
    fraction: float = _opt(0.1, lo=0, hi=1, lo_open=True)  # topk: share of coordinates each client sends
    levels: int = _opt(16, lo=2, hi=2**16)  # quantize: levels of the uniform quantiser on [-max|x|, max|x|]


@dataclass(frozen=True)
class DPConfig:
    """Client-level differential privacy (see fl/privacy.py)."""

    mode: str = _opt("none", choices=("none", "central", "local", "distributed"))
    clip: float = _opt(1.0, lo=0, lo_open=True)  # L2 bound on each client's update
    noise_multiplier: float = _opt(0.0, lo=0)  # 0 = calibrate from target_epsilon over run.rounds
    target_epsilon: float = _opt(3.0, lo=0, lo_open=True)
    delta: float = _opt(1e-5, lo=0, hi=1, lo_open=True, hi_open=True)
    epsilon_budget: float = _opt(0.0, lo=0)  # hard stop; 0 = target_epsilon
    accountant: str = _opt("pld", choices=("pld", "rdp"))
    adaptive_clipping: bool = _opt(False)
    target_quantile: float = _opt(0.5, lo=0, hi=1, lo_open=True, hi_open=True)
    clip_learning_rate: float = _opt(0.2, lo=0, lo_open=True)
    count_noise_multiplier: float = _opt(10.0, lo=0, lo_open=True)
    noise: str = _opt("discrete_gaussian", choices=("discrete_gaussian", "skellam"))  # distributed mode
    bits: int = _opt(20, lo=8, hi=62)  # distributed mode: secure-aggregation modulus bits


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "client": ClientConfig,
    "server": ServerConfig,
    "sampling": SamplingConfig,
    "dropout": DropoutConfig,
    "run": RunConfig,
    "secagg": SecAggConfig,
    "ckks": CKKSConfig,
    "compression": CompressionConfig,
    "dp": DPConfig,
}


@dataclass(frozen=True)
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    dropout: DropoutConfig = field(default_factory=DropoutConfig)
    run: RunConfig = field(default_factory=RunConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    ckks: CKKSConfig = field(default_factory=CKKSConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    dp: DPConfig = field(default_factory=DPConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in _SECTIONS:
            section = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in section.items()}
        return out

    def to_toml(self) -> str:
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            for key, value in values.items():
                lines.append(f"{key} = {_toml_value(value)}")
            lines.append("")
        return "\n".join(lines)

    def replace(self, **overrides: dict[str, Any]) -> ExperimentConfig:
        """A copy with some keys changed, validated like a loaded file: ``cfg.replace(run={"rounds": 5})``."""
        merged = self.to_dict()
        for section, values in overrides.items():
            if section not in _SECTIONS:
                raise ConfigError(section, f"unknown section; allowed: {', '.join(_SECTIONS)}")
            merged[section].update(values)
        return config_from_dict(merged)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def _check_value(key: str, value: Any, default: Any, spec: dict[str, Any]) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
        ):
            raise ConfigError(key, f"must be a list of positive integers, got {value!r}")
        return tuple(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(key, f"must be a finite number, got {value!r}")
        value = float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    choices = spec.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(key, f"unknown value {value!r}; allowed: {', '.join(map(str, choices))}")
    lo, hi = spec.get("lo"), spec.get("hi")
    if lo is not None and (value <= lo if spec.get("lo_open") else value < lo):
        raise ConfigError(key, f"must be {'>' if spec.get('lo_open') else '>='} {lo}, got {value!r}")
    if hi is not None and (value >= hi if spec.get("hi_open") else value > hi):
        raise ConfigError(key, f"must be {'<' if spec.get('hi_open') else '<='} {hi}, got {value!r}")
    return value


def _section_from_dict(name: str, cls: type, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(name, f"must be a table, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"unknown key; allowed keys in [{name}]: {', '.join(known)}")
    values = {}
    for key, value in raw.items():
        f = known[key]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        values[key] = _check_value(f"{name}.{key}", value, default, f.metadata[_SPEC])
    return cls(**values)


def config_from_dict(raw: Any) -> ExperimentConfig:
    """Validate a parsed TOML document (a dict of sections) into an :class:`ExperimentConfig`."""
    if not isinstance(raw, dict):
        raise ConfigError("<root>", f"must be a table of sections, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown section; allowed: {', '.join(_SECTIONS)}")
    sections = {name: _section_from_dict(name, cls, raw.get(name, {})) for name, cls in _SECTIONS.items()}
    cfg = ExperimentConfig(**sections)
    _cross_check(cfg)
    return cfg


def _cross_check(cfg: ExperimentConfig) -> None:
    if cfg.data.name in ("mnist", "cifar10") and not cfg.data.root:
        raise ConfigError("data.root", f"data set {cfg.data.name!r} is read from local files: set data.root")
    if cfg.data.name == "diabetes" and cfg.data.partition in ("dirichlet", "shards"):
        raise ConfigError("data.partition", "regression data has no labels to skew; allowed: iid, quantity_skew")
    if cfg.model.name == "cnn" and cfg.data.name not in ("digits", "mnist", "cifar10"):
        raise ConfigError("model.name", f"'cnn' needs image data (digits, mnist, cifar10), got {cfg.data.name!r}")
    if cfg.sampling.method == "fixed" and cfg.sampling.clients_per_round > cfg.data.num_clients:
        raise ConfigError(
            "sampling.clients_per_round",
            f"{cfg.sampling.clients_per_round} exceeds data.num_clients ({cfg.data.num_clients})",
        )
    if cfg.dp.mode == "distributed" and cfg.run.aggregation not in ("secagg", "secagg+"):
        raise ConfigError("run.aggregation", "dp.mode 'distributed' adds noise shares under secure aggregation: "
                          "allowed: secagg, secagg+")
    if cfg.dp.mode == "distributed" and cfg.dp.accountant != "rdp":
        raise ConfigError("dp.accountant", "distributed DP (discrete noise) is priced by the 'rdp' accountant only")
    if cfg.client.dpsgd_noise_multiplier > 0 and cfg.server.strategy == "fedsgd":
        raise ConfigError("server.strategy", "DP-SGD trains locally: use fedavg/fedprox/FedOpt, not fedsgd")
    if cfg.dp.mode != "none" and cfg.server.strategy == "fedsgd":
        raise ConfigError("server.strategy", "client-level DP clips model deltas: use fedavg/fedprox/FedOpt")
    if cfg.client.clip_norm > 0 and cfg.dp.mode != "none":
        raise ConfigError("client.clip_norm", "DP clips every update at dp.clip; set client.clip_norm = 0")
    if cfg.compression.method == "quantize" and cfg.dp.mode != "none":
        raise ConfigError("compression.method", "quantising after DP clipping can raise an update's norm above the "
                          "clip (the sensitivity bound); with dp.mode set, allowed: none, topk")
    if cfg.compression.method != "none" and cfg.dp.mode == "distributed":
        raise ConfigError("compression.method", "distributed DP encodes the rotated update itself; allowed: none")
    if cfg.server.strategy == "fedprox" and cfg.client.mu <= 0:
        raise ConfigError("client.mu", "strategy 'fedprox' needs client.mu > 0")


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate a TOML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("<file>", f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("<file>", f"cannot read config file {p}: {exc}") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<file>", f"{p} is not valid TOML: {exc}") from None
    return config_from_dict(raw)


def default_config() -> ExperimentConfig:
    """The built-in default: breast cancer records across 10 simulated hospitals, Dirichlet(0.5) label skew."""
    return ExperimentConfig()
