"""CKKS-encrypted aggregation in Flower: a client mod, a FedAvg strategy that adds ciphertexts, a key holder.

Roles and trust model (three parties; :mod:`secagg.ckks` has the cryptographic detail):

* **Key holder** (:class:`KeyHolderService`) -- generates the CKKS keys once per training, hands out the
  public context (parameters + public key; no secret key), and decrypts *only sums*: it refuses a sum of
  fewer than ``min_clients`` contributions and a second decryption for the same round, and floods every
  decryption it releases (IND-CPA^D protection). It must not be the aggregator: in a deployment it is a
  separate service (another organisation, an HSM, a threshold committee) that the strategy reaches through
  the ``decrypt`` callable; in a simulation it is an object on the server side that the strategy only
  knows through that callable, which takes and returns bytes/arrays and never exposes a key.
* **Clients** (:class:`CKKSClientMod`) -- get the public context from the key holder *out of band*
  (never from the aggregator: a server that chose the context could hold its secret key), run the user's
  ClientApp, and replace the FitRes parameters by one ciphertext blob of ``[w·clip(Δ), w]`` where
  ``Δ = w_local - w_global`` is clipped per coordinate to the context's ``max_abs`` and
  ``w = n_k / max_examples`` scaled to the context's weight range. ``num_examples`` is sent as 0: the weight
  is encrypted too.
* **Server** (:class:`CKKSFedAvg`, a Flower ``FedAvg``) -- tags each FitIns with the context id, adds the
  ciphertexts with :class:`~secagg.ckks.CiphertextAggregator` (public context only; it cannot decrypt),
  sends the encrypted sum to the key holder and applies the returned flooded mean: ``w_global + mean``.

The server learns the mean update of the round (plus flooding noise) and who contributed, never an
individual update or weight. Assumed: an honest-but-curious server -- it could otherwise label one
client's ciphertext as a "sum" of several (client ids are not authenticated) -- and a key holder that does
not collude with it. CKKS gives no integrity against malicious clients.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code as FlowerCode
from flwr.common import (
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAvg

from fl.errors import ConfigError, UpdateError
from fl.he import CKKSSettings, ClientEncryptors
from fl.integrations.flower_secagg import _LEGACY_FITINS, _read_train_reply, _single, add_delta, delta_vector
from secagg import ckks
from secagg.errors import EncodingError, LocalProtocolError, RemoteProtocolError, SecAggError

__all__ = ["CKKS_RECORD_KEY", "CONTEXT_ID_KEY", "TENSOR_TYPE", "CKKSClientMod", "CKKSFedAvg", "KeyHolderService"]

log = logging.getLogger(__name__)

#: FitIns config key naming the CKKS context (16-byte id) the server aggregates under.
CONTEXT_ID_KEY: Final = "fedshield.ckks.context_id"
#: Message API rounds (:class:`~fl.integrations.flower_message.CKKSGrid`): the ConfigRecord that carries the
#: context id to the client (``context_id``) and the client's ciphertext back (``update``).
CKKS_RECORD_KEY: Final = "fedshield.ckks"
#: ``Parameters.tensor_type`` of a FitRes whose single tensor is an :class:`~secagg.ckks.EncryptedUpdate`.
TENSOR_TYPE: Final = "fedshield.ckks.v1"

Decryptor = Callable[[int, bytes], tuple[npt.NDArray[np.float64], float]]


class KeyHolderService:
    """The only party holding the CKKS secret key; decrypts flooded means of sums under a policy.

    Build with :meth:`generate`. ``public_context`` goes to every client (out of band) and to the server;
    :meth:`decrypt_mean` is what the server may call (in a deployment, over an authenticated channel).
    """

    __slots__ = ("_key_holder", "_decrypted", "min_clients", "max_examples")

    def __init__(self, key_holder: ckks.KeyHolder, *, min_clients: int = 2, max_examples: float = 1000.0) -> None:
        if not isinstance(key_holder, ckks.KeyHolder):
            raise TypeError(f"key_holder must be a secagg.ckks.KeyHolder, got {type(key_holder).__name__}")
        if isinstance(min_clients, bool) or not isinstance(min_clients, int) or min_clients < 2:
            raise ConfigError("ckks.min_clients", f"must be an int >= 2 (a sum of one is that update), got {min_clients!r}")
        self._key_holder = key_holder
        self._decrypted: set[int] = set()
        self.min_clients = min_clients
        self.max_examples = float(max_examples)

    @classmethod
    def generate(cls, max_clients: int, settings: CKKSSettings | None = None, *, min_clients: int = 2) -> KeyHolderService:
        """Fresh keys for up to ``max_clients`` contributions per sum (fl's ``[ckks]`` settings).

        Weights ``n_k / settings.max_weight`` are scaled up to the largest weight the encoding range allows
        (as :class:`fl.he.CKKSAggregator` does): the flooding noise is fixed, so a larger total weight
        shrinks its effect on the mean.
        """
        s = settings or CKKSSettings()
        if not s.flood:
            raise ConfigError("ckks.flood", "decryptions leave the key holder here, so flooding must stay on")
        params = getattr(ckks, s.preset.upper(), None)
        if not isinstance(params, ckks.CkksParams):
            raise ConfigError("ckks.preset", f"preset {s.preset!r} is not available in secagg.ckks")
        clients = max(int(max_clients), 1)
        probe = ckks.AggregationConfig(params, max_clients=clients, max_abs=s.max_abs, max_weight=1e-9)
        limit = probe.range_limit(2**params.decryption_bits)
        weight_scale = 0.9 * limit / (clients * max(s.max_abs, 1.0))
        config = ckks.AggregationConfig(params, max_clients=clients, max_abs=s.max_abs, max_weight=weight_scale)
        holder = ckks.KeyHolder.generate(config, flood_security_bits=s.flood_security_bits)
        return cls(holder, min_clients=min_clients, max_examples=s.max_weight)

    def __repr__(self) -> str:
        return f"KeyHolderService(min_clients={self.min_clients}, decryptions={len(self._decrypted)})"

    @property
    def public_context(self) -> bytes:
        return self._key_holder.public_context_bytes()

    @property
    def weight_scale(self) -> float:
        """The encrypted weight of a client with ``max_examples`` examples."""
        return self._key_holder.config.max_weight

    def flooding_sigma(self, length: int) -> float:
        return self._key_holder.flooding_sigma(length)

    def decrypt_mean(self, server_round: int, encrypted_sum: bytes) -> tuple[npt.NDArray[np.float64], float]:
        """The flooded weighted mean of ``encrypted_sum`` and its total weight in examples.

        Raises:
            RemoteProtocolError: a second request for ``server_round``, or a sum of fewer than
                ``min_clients`` contributions (nothing is decrypted).
            EncodingError / CryptoError: malformed bytes, another context, or a failed decryption.
        """
        total = ckks.EncryptedSum.from_bytes(encrypted_sum)
        if server_round in self._decrypted:
            raise RemoteProtocolError(f"round {server_round} was already decrypted; one release per round")
        if total.count < self.min_clients:
            raise RemoteProtocolError(
                f"refusing to decrypt a sum of {total.count} contributions (minimum {self.min_clients})"
            )
        self._decrypted.add(server_round)
        mean, weight = self._key_holder.decrypt_mean(total, flood=True)
        return mean, weight / self.weight_scale * self.max_examples


class CKKSClientMod:
    """Flower client mod: replace the FitRes parameters by a CKKS ciphertext of the weighted update.

    ``ClientApp(client_fn=..., mods=[CKKSClientMod(public_context)])`` with the key holder's public context.
    ``max_examples`` is the public bound on ``num_examples`` (fl's ``ckks.max_weight``); ``weighting`` is
    ``"examples"`` (FedAvg) or ``"uniform"``; ``weight_key``: in Message API rounds, the reply MetricRecord's
    FedAvg weight (Flower's ``weighted_by_key``). Only ``TRAIN`` messages are touched; both Flower server
    APIs are served (:class:`CKKSFedAvg`, or :class:`~fl.integrations.flower_message.CKKSGrid`).

    Raises (inside Flower: the error reply):
        RemoteProtocolError: the fit request does not name this context (the server aggregates under
            another key, or in plaintext).
        UpdateError / EncodingError: the FitRes does not fit the global model, or ``num_examples`` exceeds
            ``max_examples``.
    """

    def __init__(
        self, public_context: bytes, *, max_examples: float = 1000.0, weighting: str = "examples",
        weight_key: str = "num-examples",
    ) -> None:
        if not isinstance(public_context, bytes):
            raise TypeError(f"public_context must be bytes, got {type(public_context).__name__}")
        if not (math.isfinite(max_examples) and max_examples > 0):
            raise ConfigError("ckks.max_weight", f"must be finite and > 0, got {max_examples!r}")
        if weighting not in ("examples", "uniform"):
            raise ConfigError("server.weighting", f"must be 'examples' or 'uniform', got {weighting!r}")
        if not isinstance(weight_key, str) or not weight_key:
            raise ConfigError("weight_key", f"must be a non-empty str, got {weight_key!r}")
        self.public_context = public_context
        self.max_examples = float(max_examples)
        self.weighting = weighting
        self.weight_key = weight_key
        self._encryptors = ClientEncryptors(public_context)

    def __repr__(self) -> str:
        return f"CKKSClientMod(max_examples={self.max_examples:g}, weighting={self.weighting!r})"

    def __getstate__(self) -> dict[str, Any]:
        # TenSEAL contexts do not pickle; a Flower simulation ships the mod to its workers, which rebuild them.
        return {"public_context": self.public_context, "max_examples": self.max_examples, "weighting": self.weighting,
                "weight_key": self.weight_key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._encryptors = ClientEncryptors(self.public_context)

    def _encrypt(self, encryptor: ckks.ClientEncryptor, delta: npt.NDArray[np.float32], num_examples: float) -> bytes:
        config = encryptor.config
        clipped = np.clip(delta.astype(np.float64), -config.max_abs, config.max_abs)
        share = 1.0 if self.weighting == "uniform" else num_examples / self.max_examples
        if not 0 <= share <= 1:
            raise UpdateError(f"num_examples={num_examples:g} exceeds the public max_examples={self.max_examples:g}")
        return encryptor.encrypt_update(clipped, min(share * config.max_weight, config.max_weight)).to_bytes()

    def __call__(self, msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN:
            return call_next(msg, ctxt)
        encryptor = self._encryptors.get(msg.metadata.dst_node_id)
        refusal = ("fit request does not name this client's CKKS context; refusing to send an update "
                   "(the server must run CKKSFedAvg or CKKSGrid with the key holder's public context)")
        if _LEGACY_FITINS not in msg.content.array_records:
            return self._message_api(msg, ctxt, call_next, encryptor, refusal)
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        if fitins.config.get(CONTEXT_ID_KEY) != encryptor.context_id:
            raise RemoteProtocolError(refusal)
        global_arrays = list(parameters_to_ndarrays(fitins.parameters))
        out = call_next(msg, ctxt)
        if out.has_error():
            return out
        fitres = compat.recorddict_to_fitres(out.content, keep_input=True)
        if fitres.status.code != FlowerCode.OK:
            raise LocalProtocolError("the ClientApp's fit returned a failure status; no update is sent")
        delta = delta_vector(list(parameters_to_ndarrays(fitres.parameters)), global_arrays)
        blob = self._encrypt(encryptor, delta, float(fitres.num_examples))
        hidden = FitRes(fitres.status, Parameters([blob], TENSOR_TYPE), 0, fitres.metrics)
        return Message(compat.fitres_to_recorddict(hidden, keep_input=False), reply_to=msg)

    def _message_api(
        self, msg: Message, ctxt: Context, call_next: ClientAppCallable, encryptor: ckks.ClientEncryptor, refusal: str
    ) -> Message:
        """A Message API round: the ArrayRecord reply becomes one ciphertext; the weight goes inside it."""
        record = msg.content.config_records.get(CKKS_RECORD_KEY)
        if record is None or record.get("context_id") != encryptor.context_id:
            raise RemoteProtocolError(refusal)
        global_arrays = _single(msg.content.array_records, "the server's train message", "ArrayRecord").to_numpy_ndarrays()
        del msg.content.config_records[CKKS_RECORD_KEY]  # the ClientApp sees the strategy's message
        out = call_next(msg, ctxt)
        if out.has_error():
            return out
        local, metric_key, hidden, num_examples = _read_train_reply(
            out, self.weight_key, need_weight=self.weighting == "examples"
        )
        blob = self._encrypt(encryptor, delta_vector(local, global_arrays), num_examples)
        reply = RecordDict({CKKS_RECORD_KEY: ConfigRecord({"update": blob}), metric_key: hidden})
        return Message(reply, reply_to=msg)


class CKKSFedAvg(FedAvg):
    """FedAvg whose ``aggregate_fit`` adds CKKS ciphertexts and asks the key holder for the (flooded) mean.

    Args:
        public_context: the key holder's public context (the server can add, not decrypt).
        decrypt: ``(server_round, EncryptedSum bytes) -> (mean update, total weight)`` -- the key holder's
            :meth:`KeyHolderService.decrypt_mean`, or an RPC stub to it.
        **kwargs: FedAvg's arguments (fractions, minimum clients, evaluate_fn, initial_parameters, ...).

    A client whose ciphertext is malformed or of another context is left out of the sum (logged, counted
    in ``ckks_rejected``); the round's metrics also give ``ckks_clients``, ``ckks_total_weight`` (examples)
    and ``ckks_upload_bytes_per_client``.
    """

    def __init__(self, *, public_context: bytes, decrypt: Decryptor, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._public_context = public_context
        self._context_id = ckks.CiphertextAggregator(public_context).context_id
        self._decrypt = decrypt
        self._global: NDArrays = []

    def __repr__(self) -> str:
        return "CKKSFedAvg(" + super().__repr__() + ")"

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        self._global = list(parameters_to_ndarrays(parameters))
        return [
            (proxy, FitIns(ins.parameters, {**ins.config, CONTEXT_ID_KEY: self._context_id}))
            for proxy, ins in super().configure_fit(server_round, parameters, client_manager)
        ]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results or (failures and not self.accept_failures):
            return None, {}
        dim = sum(int(a.size) for a in self._global)
        aggregator = ckks.CiphertextAggregator(self._public_context, length=dim)
        rejected, upload = 0, 0
        for proxy, res in results:
            try:
                tensors = res.parameters.tensors
                if res.parameters.tensor_type != TENSOR_TYPE or len(tensors) != 1:
                    raise EncodingError(f"FitRes parameters are not one {TENSOR_TYPE!r} tensor")
                aggregator.add(ckks.EncryptedUpdate.from_bytes(tensors[0]))
                upload += len(tensors[0])
            except (SecAggError, TypeError) as exc:
                log.warning("round %s: rejected the update of node %s: %s", server_round, proxy.node_id, exc)
                rejected += 1
        if aggregator.count == 0:
            return None, {"ckks_rejected": float(rejected)}
        mean, total_weight = self._decrypt(server_round, aggregator.result().to_bytes())
        if mean.shape != (dim,):
            raise EncodingError(f"the key holder returned a mean of shape {mean.shape}, expected ({dim},)")
        metrics: dict[str, Scalar] = {
            "ckks_clients": float(aggregator.count),
            "ckks_rejected": float(rejected),
            "ckks_total_weight": float(total_weight),
            "ckks_upload_bytes_per_client": upload / aggregator.count,
        }
        if self.fit_metrics_aggregation_fn is not None:
            metrics.update(self.fit_metrics_aggregation_fn([(1, res.metrics) for _, res in results]))
        return ndarrays_to_parameters(add_delta(self._global, mean)), metrics
