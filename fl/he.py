"""CKKS homomorphic aggregation behind the :class:`Aggregator` seam (``aggregation = "ckks"``).

Three roles live in this process for simulation: a *key holder* (creates the keys once per training and is
the only party that can decrypt), the *clients* (encrypt ``[w_k · clip(Δ_k), w_k]`` with the public context)
and the *server* (adds ciphertexts; it holds no secret key). The public context is serialised once and
handed to every client and the server at construction. Every decryption that leaves the key holder is
noise-flooded (IND-CPA^D protection, see ``secagg.ckks`` and SECURITY.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fl.aggregators import Aggregator, Weighting, bounded_weight, check_updates
from fl.errors import ConfigError
from fl.types import Aggregate, ClientUpdate

PRESETS: tuple[str, ...] = ("compact", "add_only", "scalar_mul")


class EncryptJob(NamedTuple):
    """One client's encryption: ``[weight * vector, weight]`` under the public context (what a client does)."""

    client_id: int
    vector: np.ndarray  # float64, already clipped to max_abs
    weight: float


#: Encrypts a round's jobs elsewhere (e.g. :class:`fl.backends.ray.RayCKKSEncryptor`): given the public
#: context and the jobs, returns each job's ``secagg.ckks.EncryptedUpdate`` and client seconds, in job order.
EncryptDriver = Callable[[bytes, Sequence[EncryptJob]], list[tuple[Any, float]]]
_ENCRYPT_DRIVER: ContextVar[EncryptDriver | None] = ContextVar("fedshield_ckks_encrypt_driver", default=None)


class ClientEncryptors:
    """The encryptors of the simulated clients in one process: the public context is loaded once and shared
    (loading rebuilds SEAL's NTT tables, ~15 ms, which a real client does once per training), and each
    client id gets its own :class:`secagg.ckks.ClientEncryptor` (its id goes into every update)."""

    def __init__(self, public_context: bytes) -> None:
        from secagg.ckks import ClientEncryptor

        self.public_context = public_context
        self._new = ClientEncryptor
        self._by_client: dict[int, Any] = {}

    def get(self, client_id: int) -> Any:
        encryptor = self._by_client.get(client_id)
        if encryptor is None:
            first = next(iter(self._by_client.values()), None)
            encryptor = (first.for_client(client_id) if first is not None
                         else self._new(self.public_context, client_id=client_id))
            self._by_client[client_id] = encryptor
        return encryptor

    def encrypt(self, jobs: Sequence[EncryptJob]) -> Iterator[tuple[Any, float]]:
        """Each job's ``EncryptedUpdate`` and client seconds, lazily (one ciphertext at a time)."""
        for job in jobs:
            t0 = time.perf_counter()
            encrypted = self.get(job.client_id).encrypt_update(job.vector, job.weight)
            yield encrypted, time.perf_counter() - t0


@contextmanager
def use_encrypt_driver(driver: EncryptDriver) -> Iterator[None]:
    """Route the client-side encryption of every :class:`CKKSAggregator` round in this context to ``driver``
    (the server's ciphertext sum and the key holder's decryption stay here)."""
    token = _ENCRYPT_DRIVER.set(driver)
    try:
        yield
    finally:
        _ENCRYPT_DRIVER.reset(token)


@dataclass(frozen=True)
class CKKSSettings:
    """Public parameters of CKKS aggregation in a training run (the ``[ckks]`` config section)."""

    preset: str = "compact"
    max_abs: float = 1.0
    flood: bool = True
    flood_security_bits: int = 40
    max_weight: float = 1000.0

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError("ckks.preset", f"unknown preset {self.preset!r}; allowed: {', '.join(PRESETS)}")
        if not self.max_abs > 0:
            raise ConfigError("ckks.max_abs", f"must be > 0, got {self.max_abs}")
        if not 20 <= self.flood_security_bits <= 128:
            raise ConfigError("ckks.flood_security_bits", f"must be in 20..128, got {self.flood_security_bits}")
        if not self.max_weight > 0:
            raise ConfigError("ckks.max_weight", f"must be > 0, got {self.max_weight}")


class CKKSAggregator(Aggregator):
    """Weighted FedAvg mean computed under CKKS: the server sees neither updates nor weights."""

    def __init__(self, num_clients: int, settings: CKKSSettings | None = None, *, weighting: Weighting = "examples"):
        from secagg import ckks

        self.settings = settings or CKKSSettings()
        self.weighting: Weighting = weighting
        params = getattr(ckks, self.settings.preset.upper(), None)
        if not isinstance(params, ckks.CkksParams):
            raise ConfigError("ckks.preset", f"preset {self.settings.preset!r} is not available in secagg.ckks")
        # Client weights are n_k / max_weight scaled up to the largest weight the encoding range allows: the
        # flooding noise on the decrypted sum is fixed, so a larger total weight shrinks its effect on the mean.
        clients = max(num_clients, 1)
        probe = ckks.AggregationConfig(params, max_clients=clients, max_abs=self.settings.max_abs, max_weight=1e-9)
        limit = probe.range_limit(2**params.decryption_bits)
        # 0.9: the key holder re-checks against the exact prime, a little below its nominal 2^bits
        self.weight_scale = 0.9 * limit / (clients * max(self.settings.max_abs, 1.0))
        config = ckks.AggregationConfig(params, max_clients=clients, max_abs=self.settings.max_abs,
                                        max_weight=self.weight_scale)
        t0 = time.perf_counter()
        self._key_holder = ckks.KeyHolder.generate(config, flood_security_bits=self.settings.flood_security_bits)
        self.public_context = self._key_holder.public_context_bytes()  # serialised once per training
        self.setup_seconds = time.perf_counter() - t0
        self._encryptors = ClientEncryptors(self.public_context)
        self._ckks = ckks

    def aggregate(
        self, updates: Sequence[ClientUpdate], *, dim: int, round_index: int, late_dropouts: Sequence[int] = ()
    ) -> Aggregate:
        check_updates(updates, dim)
        s = self.settings
        metrics: dict[str, float] = {"ckks_context_bytes": float(len(self.public_context))}
        if not updates:
            return Aggregate(np.zeros(dim, np.float32), 0.0, 0, metrics)  # dropped clients simply do not contribute
        t_client = 0.0
        server = self._ckks.CiphertextAggregator(self.public_context, length=dim)
        t_server = 0.0
        upload = 0
        clipped = 0
        jobs = []
        for u in updates:
            weight = bounded_weight(u, self.weighting, s.max_weight, "ckks.max_weight")
            clipped += int(np.count_nonzero(np.abs(u.delta) > s.max_abs))
            x = np.clip(u.delta.astype(np.float64), -s.max_abs, s.max_abs)
            jobs.append(EncryptJob(u.client_id, x, weight * self.weight_scale))
        driver = _ENCRYPT_DRIVER.get()
        if driver is not None:  # the clients encrypt elsewhere; the server adds what comes back, in order
            returned = driver(self.public_context, jobs)
            if len(returned) != len(jobs):
                raise RuntimeError(f"the encryption driver returned {len(returned)} updates for {len(jobs)} jobs")
            encrypted_all: Iterable[tuple[Any, float]] = returned
        else:
            encrypted_all = self._encryptors.encrypt(jobs)  # encrypt and add one at a time: one ciphertext in memory
        for encrypted, seconds in encrypted_all:
            t1 = time.perf_counter()
            server.add(encrypted)
            t_server += time.perf_counter() - t1
            t_client += seconds
            upload += encrypted.nbytes
        t0 = time.perf_counter()
        total = server.result()
        t_server += time.perf_counter() - t0
        t0 = time.perf_counter()
        mean, total_weight = self._key_holder.decrypt_mean(total, flood=s.flood)
        t_decrypt = time.perf_counter() - t0
        metrics.update(
            {
                "ckks_client_time_s": t_client / len(updates),
                "ckks_server_time_s": t_server,
                "ckks_decrypt_time_s": t_decrypt,
                "ckks_upload_bytes_per_client": upload / len(updates),
                "ckks_flood_sigma": self._key_holder.flooding_sigma(dim) if s.flood else 0.0,
                "ckks_clipped_fraction": clipped / (len(updates) * dim),
            }
        )
        metrics["ckks_mean_noise_std"] = metrics["ckks_flood_sigma"] / max(total_weight, 1e-300)
        return Aggregate(
            mean.astype(np.float32), total_weight / self.weight_scale * s.max_weight, len(updates), metrics
        )
