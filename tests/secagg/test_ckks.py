from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from secagg.ckks import (
    ADD_ONLY,
    COMPACT,
    DEFAULT,
    HE_STANDARD_128_MAX_BITS,
    SCALAR_MUL,
    AggregationConfig,
    CiphertextAggregator,
    CkksParams,
    ClientEncryptor,
    EncryptedSum,
    EncryptedUpdate,
    KeyHolder,
    _decode_setup,
    _encode_setup,
    _gaussian_noise,
    _tail_factor,
    flooding_sigma,
    fresh_noise_std,
    mean_error_bound,
    sum_error_bound,
)
from secagg.errors import CryptoError, EncodingError, ParameterError, RemoteProtocolError

MAX_CLIENTS = 8
MAX_ABS = 4.0
MAX_WEIGHT = 10.0
SLOTS = ADD_ONLY.slot_count  # 2048 (COMPACT too)
ADD_ONLY_PRESETS = {"COMPACT": COMPACT, "ADD_ONLY": ADD_ONLY}
# lengths around the chunk boundaries: m + 1 = 2048 fills one ciphertext exactly, m = 2048 needs two
LENGTHS = st.one_of(st.integers(1, 40), st.sampled_from([2046, 2047, 2048, 2049, 3001, 4095, 4500]))


@pytest.fixture(scope="module")
def parties() -> dict[str, tuple[KeyHolder, list[ClientEncryptor]]]:
    """Key holder and MAX_CLIENTS encryptors per add-only preset (same config: V = 320 fits both)."""
    out = {}
    for name, params in ADD_ONLY_PRESETS.items():
        key_holder = KeyHolder.generate(AggregationConfig(params, MAX_CLIENTS, MAX_ABS, MAX_WEIGHT))
        public = key_holder.public_context_bytes()
        out[name] = (key_holder, [ClientEncryptor(public, client_id=c) for c in range(MAX_CLIENTS)])
    return out


@pytest.fixture(scope="module")
def holder(parties: dict[str, tuple[KeyHolder, list[ClientEncryptor]]]) -> KeyHolder:
    return parties["ADD_ONLY"][0]


@pytest.fixture(scope="module")
def mul_holder() -> KeyHolder:
    return KeyHolder.generate(AggregationConfig(SCALAR_MUL, 4, 1.0, 5.0))


@pytest.fixture(scope="module")
def encryptors(parties: dict[str, tuple[KeyHolder, list[ClientEncryptor]]]) -> list[ClientEncryptor]:
    return parties["ADD_ONLY"][1]


def inputs(seed: int, n: int, m: int, max_abs: float = MAX_ABS, max_weight: float = MAX_WEIGHT
           ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.uniform(-max_abs, max_abs, (n, m))
    vectors[:, : min(m, 2)] = max_abs * rng.choice([-1.0, 1.0], (n, min(m, 2)))  # the clip itself
    weights = rng.uniform(0.05, max_weight, n)
    weights[0] = max_weight
    return vectors, weights


def aggregate(public: bytes, encryptors: Sequence[ClientEncryptor], vectors: np.ndarray,
              weights: np.ndarray, *, multiplier: float = 1.0) -> EncryptedSum:
    server = CiphertextAggregator(public)
    for enc, x, w in zip(encryptors, vectors, weights, strict=True):
        server.add(enc.encrypt_update(x, float(w)))
    return server.result(multiplier=multiplier)


def exact(vectors: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float]:
    return weights @ vectors, float(weights.sum())  # float64 reference


# ---------------------------------------------------------------------------------------------
# correctness within the documented bound
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ADD_ONLY_PRESETS)
@settings(max_examples=25, deadline=None)
@given(st.integers(1, MAX_CLIENTS), LENGTHS, st.integers(0, 2**32))
def test_weighted_mean_within_documented_bound(parties: dict[str, tuple[KeyHolder, list[ClientEncryptor]]],
                                               preset: str, n: int, m: int, seed: int) -> None:
    holder, encryptors = parties[preset]
    vectors, weights = inputs(seed, n, m)
    total = aggregate(holder.public_context_bytes(), encryptors[:n], vectors, weights)
    assert total.num_chunks == math.ceil((m + 1) / SLOTS) and total.count == n
    ref_sum, ref_weight = exact(vectors, weights)
    bound = sum_error_bound(holder.config, n, m, total_weight=ref_weight)

    raw_sum, raw_weight = holder.decrypt_sum(total, flood=False)
    assert raw_sum.shape == (m,) and raw_sum.dtype == np.float64
    assert np.max(np.abs(raw_sum - ref_sum)) <= bound
    assert abs(raw_weight - ref_weight) <= bound

    mean, weight = holder.decrypt_mean(total, flood=False)
    assert np.max(np.abs(mean - ref_sum / ref_weight)) <= mean_error_bound(holder.config, ref_weight, bound)
    assert abs(weight - ref_weight) <= bound

    # flooded (the default): within bound + tau(k) flooding sigmas
    sigma = holder.flooding_sigma(m)
    flooded_bound = bound + _tail_factor(m + 1, 40) * sigma
    mean, weight = holder.decrypt_mean(total)
    assert abs(weight - ref_weight) <= flooded_bound
    assert np.max(np.abs(mean - ref_sum / ref_weight)) <= mean_error_bound(
        holder.config, ref_weight, flooded_bound
    )


def test_for_client_shares_the_loaded_context_and_sums_within_bound(holder: KeyHolder) -> None:
    """Encryptors made with for_client (one context load for many simulated clients) are interchangeable with
    freshly loaded ones: the server accepts them as distinct clients and the sum is within the bound."""
    public = holder.public_context_bytes()
    first = ClientEncryptor(public, client_id=0)
    shared = [first, *(first.for_client(c) for c in range(1, 4))]
    assert [e.context_id for e in shared] == [first.context_id] * 4 and not shared[3].holds_secret_key
    assert repr(shared[2]) == f"ClientEncryptor(client_id=2, params={holder.config.params})"
    vectors, weights = inputs(7, 4, 300)
    total = aggregate(public, shared, vectors, weights)
    assert total.count == 4
    ref_sum, ref_weight = exact(vectors, weights)
    raw_sum, raw_weight = holder.decrypt_sum(total, flood=False)
    bound = sum_error_bound(holder.config, 4, 300, total_weight=ref_weight)
    assert np.max(np.abs(raw_sum - ref_sum)) <= bound and abs(raw_weight - ref_weight) <= bound
    server = CiphertextAggregator(public)
    server.add(shared[1].encrypt_update(vectors[0], 1.0))
    with pytest.raises(RemoteProtocolError, match="duplicate"):  # the id is really the new client's: a second update from it is refused
        server.add(first.for_client(1).encrypt_update(vectors[1], 1.0))
    with pytest.raises(ParameterError, match="client_id"):
        first.for_client(-1)


@pytest.mark.parametrize(("preset", "fresh_std", "max_bound"),
                         [("ADD_ONLY", 6.07e-13, 1e-9), ("COMPACT", 3.88e-11, 1e-8)])
def test_error_bound_has_margin_and_noise_model_matches(
        parties: dict[str, tuple[KeyHolder, list[ClientEncryptor]]], preset: str, fresh_std: float,
        max_bound: float) -> None:
    holder, encryptors = parties[preset]
    params = ADD_ONLY_PRESETS[preset]
    m = SLOTS - 1  # one full ciphertext
    public = holder.public_context_bytes()
    zeros = np.zeros((1, m))
    raw, _ = holder.decrypt_sum(aggregate(public, encryptors[:1], zeros, np.ones(1)), flood=False)
    # measured per-slot standard deviation of one fresh encryption vs the analytical N(2 + 2N/3)/24 (which
    # neglects the public-key noise divided by the special prime: COMPACT's 49-bit one absorbs it too)
    assert fresh_noise_std(params) == pytest.approx(fresh_std, rel=0.01)
    assert np.std(raw) == pytest.approx(fresh_noise_std(params), rel=0.2)

    vectors, weights = inputs(7, MAX_CLIENTS, m)
    ref_sum, ref_weight = exact(vectors, weights)
    total = aggregate(public, encryptors, vectors, weights)
    raw, _ = holder.decrypt_sum(total, flood=False)
    err = np.max(np.abs(raw - ref_sum))
    bound = sum_error_bound(holder.config, MAX_CLIENTS, m, total_weight=ref_weight)
    assert 0 < err < bound / 3  # a bound with margin, not a coin flip
    assert bound < max_bound


def test_scalar_multiplication_preset(mul_holder: KeyHolder) -> None:
    public = mul_holder.public_context_bytes()
    cfg = mul_holder.config
    m = 5000  # two 4096-slot chunks, second partly filled
    vectors, weights = inputs(3, 3, m, max_abs=cfg.max_abs, max_weight=cfg.max_weight)
    encs = [ClientEncryptor(public, client_id=c) for c in (11, 12, 13)]
    server = CiphertextAggregator(public, length=m)
    for enc, x, w in zip(encs, vectors, weights, strict=True):
        server.add(enc.encrypt_update(x, float(w)))
    ref_sum, ref_weight = exact(vectors, weights)
    for c in (0.5, -0.25):
        total = server.result(multiplier=c)
        assert total.rescales == 1 and total.multiplier == c
        bound = sum_error_bound(cfg, 3, m, total_weight=ref_weight, rescales=1)
        got_sum, got_weight = mul_holder.decrypt_sum(total, flood=False)
        assert np.max(np.abs(got_sum - c * ref_sum)) <= bound
        assert abs(got_weight - c * ref_weight) <= bound
        mean, weight = mul_holder.decrypt_mean(total, flood=False)
        assert np.max(np.abs(mean - ref_sum / ref_weight)) <= mean_error_bound(cfg, ref_weight, 4 * bound)
        assert weight == pytest.approx(ref_weight, abs=4 * bound)
    with pytest.raises(EncodingError, match="multiplier"):
        server.result(multiplier=2.0)


def test_multiplication_refused_by_add_only_preset(holder: KeyHolder,
                                                   encryptors: list[ClientEncryptor]) -> None:
    server = CiphertextAggregator(holder.public_context_bytes())
    server.add(encryptors[0].encrypt_update(np.ones(3), 1.0))
    with pytest.raises(ParameterError, match="scalar_mul_depth=0"):
        server.result(multiplier=0.5)
    with pytest.raises(EncodingError):
        server.result(multiplier=float("nan"))


# ---------------------------------------------------------------------------------------------
# keys and contexts
# ---------------------------------------------------------------------------------------------


def test_server_and_client_contexts_hold_no_secret_key(holder: KeyHolder,
                                                        encryptors: list[ClientEncryptor]) -> None:
    public = holder.public_context_bytes()
    assert public is holder.public_context_bytes()  # serialised once, handed out as is
    server = CiphertextAggregator(public)
    update = encryptors[0].encrypt_update(np.arange(5.0) / 5, 2.0)
    server.add(update)
    for party in (server, encryptors[0]):
        assert party.holds_secret_key is False
        context = party._context
        assert context.is_private() is False and context.has_secret_key() is False
        with pytest.raises(ValueError, match="secret"):
            ts.ckks_vector_from(context, update.chunks[0]).decrypt()
    # the TenSEAL bytes inside the public blob deserialise to a public context
    _, context_bytes = _decode_setup(public)
    context = ts.context_from(context_bytes)
    assert not context.is_private() and not context.has_secret_key() and context.has_public_key()
    assert not context.has_relin_keys() and not context.has_galois_keys()
    # the key holder's own context can decrypt the very same chunk
    assert holder._context.is_private()
    values = ts.ckks_vector_from(holder._context, update.chunks[0]).decrypt()
    np.testing.assert_allclose(values[:5], 2.0 * np.arange(5.0) / 5, atol=1e-9)


def test_private_context_is_refused_by_clients_and_server(holder: KeyHolder) -> None:
    private = holder._context.serialize(save_secret_key=True)
    blob = _encode_setup(holder.config, private)
    with pytest.raises(ParameterError, match="secret key"):
        ClientEncryptor(blob, client_id=0)
    with pytest.raises(ParameterError, match="secret key"):
        CiphertextAggregator(blob)


def test_malformed_public_context_refused(holder: KeyHolder) -> None:
    public = holder.public_context_bytes()
    for bad in (public[:10], public[:-1], public + b"\0", b"XXXX" + public[4:]):
        with pytest.raises(EncodingError):
            ClientEncryptor(bad, client_id=0)
    with pytest.raises(TypeError):
        CiphertextAggregator(bytearray(public))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# parameters and range
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "bits", "limit"),
    [(4096, (60, 60), 109), (4096, (40, 40, 40), 109), (2048, (30, 30), 54), (8192, (60, 60, 60, 40), 218)],
)
def test_insecure_parameters_refused_naming_limit(n: int, bits: tuple[int, ...], limit: int) -> None:
    with pytest.raises(ParameterError, match=rf"128-bit security limit of {limit} bits for N={n}"):
        CkksParams(n, bits, 20)


def test_presets_within_the_standard() -> None:
    for params in (COMPACT, ADD_ONLY, SCALAR_MUL):
        assert params.total_bits <= HE_STANDARD_128_MAX_BITS[params.poly_modulus_degree]
        assert params.security_limit_bits == HE_STANDARD_128_MAX_BITS[params.poly_modulus_degree]
        # the preset's own 128-bit check passes when rebuilt from its fields
        assert CkksParams(params.poly_modulus_degree, params.coeff_mod_bit_sizes, params.scale_bits,
                          params.scalar_mul_depth) == params
    for params in (ADD_ONLY, SCALAR_MUL):
        assert params.decryption_bits == 80 and params.scale_bits == 50
    assert DEFAULT is COMPACT
    assert (COMPACT.poly_modulus_degree, COMPACT.coeff_mod_bit_sizes, COMPACT.scale_bits) == (4096, (60, 49), 44)
    assert (COMPACT.total_bits, COMPACT.decryption_bits, COMPACT.scalar_mul_depth) == (109, 60, 0)
    assert COMPACT.slot_count == ADD_ONLY.slot_count == 2048
    assert (ADD_ONLY.poly_modulus_degree, ADD_ONLY.total_bits, ADD_ONLY.scalar_mul_depth) == (4096, 109, 0)
    assert (SCALAR_MUL.poly_modulus_degree, SCALAR_MUL.total_bits, SCALAR_MUL.scalar_mul_depth) == (8192, 180, 1)
    # one bit more anywhere breaks the 109-bit limit
    with pytest.raises(ParameterError, match="109 bits for N=4096"):
        CkksParams(4096, (60, 50), 44)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"poly_modulus_degree": 3000, "coeff_mod_bit_sizes": (30, 30), "scale_bits": 20},
        {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (60,), "scale_bits": 40},
        {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (61, 40), "scale_bits": 40},
        {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (40, 40, 29), "scale_bits": 10},
        # the rescale prime must match the scale
        {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": (40, 40, 45, 50), "scale_bits": 50,
         "scalar_mul_depth": 1},
        {"poly_modulus_degree": 4096, "coeff_mod_bit_sizes": (50, 50), "scale_bits": 50, "scalar_mul_depth": 1},
    ],
)
def test_bad_parameters_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ParameterError):
        CkksParams(**kwargs)  # type: ignore[arg-type]


def test_custom_parameters_go_through_the_same_checks() -> None:
    params = CkksParams(2048, (27, 27), 20)  # exactly the 54-bit limit
    holder = KeyHolder.generate(AggregationConfig(params, 2, 1.0, 1.0))
    public = holder.public_context_bytes()
    server = CiphertextAggregator(public)
    vectors = np.array([[0.5, -0.25, 1.0], [-1.0, 0.125, 0.0]])
    for c in range(2):
        server.add(ClientEncryptor(public, client_id=c).encrypt_update(vectors[c], 1.0))
    got, weight = holder.decrypt_sum(server.result(), flood=False)
    bound = sum_error_bound(holder.config, 2, 3)
    assert np.max(np.abs(got - vectors.sum(axis=0))) <= bound and abs(weight - 2.0) <= bound
    with pytest.raises(ParameterError, match="encoding range 32 "):
        AggregationConfig(params, 2, 20.0, 1.0)  # V = 2*1*20 = 40 > 2^27 / (4 * 2^20) = 32


def test_range_refused_naming_limit() -> None:
    with pytest.raises(ParameterError, match=r"encoding range 2\.68\d*e\+08") as info:
        AggregationConfig(ADD_ONLY, max_clients=1000, max_abs=100.0, max_weight=1e4)
    assert "max_clients*max_weight*max(max_abs, 1) = 1e+09" in str(info.value)
    AggregationConfig(ADD_ONLY, max_clients=1000, max_abs=10.0, max_weight=1e4)  # 1e8 fits
    for bad in ({"max_abs": 0.0}, {"max_weight": -1.0}, {"max_abs": math.inf}, {"max_clients": 0}):
        with pytest.raises(ParameterError):
            AggregationConfig(**({"params": ADD_ONLY, "max_clients": 2, "max_abs": 1.0, "max_weight": 1.0}
                                 | bad))  # type: ignore[arg-type]


def test_compact_range_limit() -> None:
    # V <= q / (4 * 2^44) with q ~ 2^60: 16384
    with pytest.raises(ParameterError, match=r"encoding range 16384 = q/\(4\*2\^44\)") as info:
        AggregationConfig(COMPACT, max_clients=10, max_abs=1.0, max_weight=2000.0)
    assert "max_clients*max_weight*max(max_abs, 1) = 20000" in str(info.value)
    with pytest.raises(ParameterError, match="encoding range"):
        AggregationConfig(COMPACT, max_clients=100, max_abs=200.0, max_weight=1.0)  # 2e4 via max_abs
    # 10 clients with sample counts up to 1000 as weights fit, up to the exact 60-bit prime
    KeyHolder.generate(AggregationConfig(COMPACT, max_clients=10, max_abs=1.0, max_weight=1000.0))
    # V = 16384 passes the nominal 2^60 check, but the exact prime is below 2^60: the key holder refuses
    at_nominal = AggregationConfig(COMPACT, max_clients=16, max_abs=1.0, max_weight=1024.0)
    with pytest.raises(ParameterError, match="exceeds the encoding range .* the 60-bit data modulus"):
        KeyHolder.generate(at_nominal)


def test_compact_expansion_within_goal(parties: dict[str, tuple[KeyHolder, list[ClientEncryptor]]]) -> None:
    m = 10**4
    vector = np.random.default_rng(5).uniform(-MAX_ABS, MAX_ABS, m).astype(np.float32)
    sizes = {name: encs[0].encrypt_update(vector, MAX_WEIGHT).nbytes for name, (_, encs) in parties.items()}
    expansion = {name: size / (4 * m) for name, size in sizes.items()}  # over float32
    # floor: 60 data bits / 2 = 30 bytes per value = 7.5x; goal: <= 10x (measured 8.2x at 10^4, 8.0x at 10^6)
    assert 7.5 < expansion["COMPACT"] <= 10.0
    assert expansion["ADD_ONLY"] > 11.0  # why ADD_ONLY is not the default


def test_out_of_range_and_non_finite_inputs_refused(encryptors: list[ClientEncryptor]) -> None:
    enc = encryptors[0]
    secret_value = 123.456789
    with pytest.raises(EncodingError, match="max_abs") as info:
        enc.encrypt_update(np.array([0.0, secret_value]), 1.0)
    assert "123.45" not in str(info.value)  # messages never quote values
    for weight in (MAX_WEIGHT * 1.001, -1e-9, math.nan, math.inf):
        with pytest.raises(EncodingError, match="weight"):
            enc.encrypt_update(np.zeros(3), weight)
    for vector in (np.array([0.0, math.nan]), np.array([math.inf]), np.array([-math.inf, 0.0])):
        with pytest.raises(EncodingError, match="non-finite"):
            enc.encrypt_update(vector, 1.0)
    for vector in (np.zeros(0), np.zeros((2, 2))):
        with pytest.raises(EncodingError):
            enc.encrypt_update(vector, 1.0)
    with pytest.raises(TypeError):
        enc.encrypt_update(np.array([1 + 1j]), 1.0)
    with pytest.raises(TypeError):
        enc.encrypt_update(np.zeros(2), True)
    enc.encrypt_update(np.array([MAX_ABS, -MAX_ABS]), MAX_WEIGHT)  # the limits themselves are fine
    enc.encrypt_update([1, 2, 3], 0)  # integer lists and zero weight are fine


def test_server_caps_contributions_at_max_clients() -> None:
    holder = KeyHolder.generate(AggregationConfig(ADD_ONLY, 2, 1.0, 1.0))
    public = holder.public_context_bytes()
    server = CiphertextAggregator(public)
    for c in range(2):
        server.add(ClientEncryptor(public, client_id=c).encrypt_update(np.zeros(4), 1.0))
    with pytest.raises(EncodingError, match="max_clients=2"):
        server.add(ClientEncryptor(public, client_id=9).encrypt_update(np.zeros(4), 1.0))


# ---------------------------------------------------------------------------------------------
# malformed and mismatched updates
# ---------------------------------------------------------------------------------------------


def test_mismatched_updates_refused(holder: KeyHolder, encryptors: list[ClientEncryptor],
                                    mul_holder: KeyHolder) -> None:
    public = holder.public_context_bytes()
    m = 3001  # chunks of 2048 and 954 slots
    good = encryptors[0].encrypt_update(np.full(m, 0.5), 2.0)
    server = CiphertextAggregator(public, length=m)

    with pytest.raises(EncodingError, match="length"):
        server.add(encryptors[1].encrypt_update(np.zeros(m + 1), 1.0))
    with pytest.raises(EncodingError, match="chunks"):
        server.add(replace(good, chunks=good.chunks[:1]))
    with pytest.raises(EncodingError, match="chunks"):
        server.add(replace(good, chunks=good.chunks + good.chunks[:1]))
    with pytest.raises(EncodingError, match="chunk 0"):
        server.add(replace(good, chunks=good.chunks[::-1]))  # right count, wrong slot counts
    other = KeyHolder.generate(holder.config)
    foreign = ClientEncryptor(other.public_context_bytes(), client_id=5).encrypt_update(np.zeros(m), 1.0)
    with pytest.raises(EncodingError, match="context id"):
        server.add(foreign)
    # other parameters under a forged context id: SEAL refuses the ciphertext
    wrong_params = ClientEncryptor(mul_holder.public_context_bytes(), client_id=5).encrypt_update(
        np.zeros(m), 1.0)
    with pytest.raises(EncodingError, match="chunk 0"):
        server.add(replace(wrong_params, context_id=good.context_id, chunks=wrong_params.chunks[:1] * 2))
    for junk in (b"", b"garbage", good.chunks[0][:100], good.chunks[0][:-7], bytes(len(good.chunks[0]))):
        with pytest.raises(EncodingError, match="chunk 0"):
            server.add(replace(good, chunks=(junk, good.chunks[1])))

    assert server.count == 0  # every rejection left the sum untouched
    server.add(good)
    with pytest.raises(RemoteProtocolError, match="duplicate"):
        server.add(good)
    got, weight = holder.decrypt_sum(server.result(), flood=False)
    bound = sum_error_bound(holder.config, 1, m)
    assert np.max(np.abs(got - 1.0)) <= bound and abs(weight - 2.0) <= bound


def test_update_and_sum_wire_format(holder: KeyHolder, encryptors: list[ClientEncryptor]) -> None:
    update = encryptors[2].encrypt_update(np.linspace(-1, 1, 2500), 3.0)
    data = update.to_bytes()
    assert update.nbytes == len(data) and EncryptedUpdate.from_bytes(data) == update
    for bad in (data[:20], data[:-1], data + b"\0", b"FSCA" + data[4:], data[:4] + b"\x00" + data[5:]):
        with pytest.raises(EncodingError):
            EncryptedUpdate.from_bytes(bad)

    server = CiphertextAggregator(holder.public_context_bytes())
    server.add(EncryptedUpdate.from_bytes(data))
    total = server.result()
    raw = total.to_bytes()
    assert total.nbytes == len(raw) and EncryptedSum.from_bytes(raw) == total
    for bad in (raw[:30], raw[:-1], raw + b"\0", data):
        with pytest.raises(EncodingError):
            EncryptedSum.from_bytes(bad)
    mean, weight = holder.decrypt_mean(EncryptedSum.from_bytes(raw), flood=False)
    np.testing.assert_allclose(mean, np.linspace(-1, 1, 2500), atol=1e-9)
    assert weight == pytest.approx(3.0, abs=1e-9)


def test_key_holder_validates_sums(holder: KeyHolder, encryptors: list[ClientEncryptor]) -> None:
    server = CiphertextAggregator(holder.public_context_bytes())
    server.add(encryptors[0].encrypt_update(np.zeros(3000), 1.0))
    total = server.result()
    with pytest.raises(EncodingError, match="context id"):
        holder.decrypt_sum(replace(total, context_id=bytes(16)))
    with pytest.raises(EncodingError, match="chunks"):
        holder.decrypt_sum(replace(total, chunks=total.chunks[:1]))
    with pytest.raises(EncodingError, match="chunk 1"):
        holder.decrypt_sum(replace(total, chunks=(total.chunks[0], b"junk")))
    with pytest.raises(EncodingError, match="multiplier"):
        holder.decrypt_sum(replace(total, multiplier=0.5, rescales=1))
    with pytest.raises(EncodingError, match="max_clients"):
        holder.decrypt_sum(replace(total, client_ids=tuple(range(MAX_CLIENTS + 1))))


def test_zero_total_weight_has_no_mean(holder: KeyHolder, encryptors: list[ClientEncryptor]) -> None:
    server = CiphertextAggregator(holder.public_context_bytes())
    server.add(encryptors[0].encrypt_update(np.ones(10), 0.0))
    with pytest.raises(EncodingError, match="not distinguishable from zero"):
        holder.decrypt_mean(server.result())
    _, weight = holder.decrypt_sum(server.result(), flood=False)
    assert abs(weight) <= sum_error_bound(holder.config, 1, 10)


def test_decryption_failure_is_crypto_error(holder: KeyHolder, encryptors: list[ClientEncryptor],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    server = CiphertextAggregator(holder.public_context_bytes())
    server.add(encryptors[0].encrypt_update(np.ones(4), 1.0))
    total = server.result()

    def fail(*_: object) -> None:
        raise RuntimeError("seal said no")

    monkeypatch.setattr(ts.CKKSVector, "decrypt", fail)
    with pytest.raises(CryptoError) as info:
        holder.decrypt_sum(total)
    assert str(info.value) == "decryption failed" and info.value.__cause__ is None


# ---------------------------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------------------------


@settings(max_examples=12, deadline=None)
@given(st.sets(st.integers(0, MAX_CLIENTS - 1), min_size=1), st.integers(0, 2**32))
def test_dropout_any_subset_gives_its_weighted_mean(holder: KeyHolder, encryptors: list[ClientEncryptor],
                                                    survivors: set[int], seed: int) -> None:
    m = 300
    vectors, weights = inputs(seed, MAX_CLIENTS, m)
    updates = [enc.encrypt_update(x, float(w)) for enc, x, w in zip(encryptors, vectors, weights, strict=True)]
    server = CiphertextAggregator(holder.public_context_bytes(), length=m)
    for c in sorted(survivors):  # the others dropped: they simply never arrive
        server.add(updates[c])
    total = server.result()
    assert total.client_ids == tuple(sorted(survivors))
    idx = sorted(survivors)
    ref_sum, ref_weight = exact(vectors[idx], weights[idx])
    bound = sum_error_bound(holder.config, len(idx), m, total_weight=ref_weight)
    mean, weight = holder.decrypt_mean(total, flood=False)
    assert abs(weight - ref_weight) <= bound
    assert np.max(np.abs(mean - ref_sum / ref_weight)) <= mean_error_bound(holder.config, ref_weight, bound)


# ---------------------------------------------------------------------------------------------
# flooding
# ---------------------------------------------------------------------------------------------


def test_flooding_noise_has_the_reported_sigma(holder: KeyHolder, encryptors: list[ClientEncryptor]) -> None:
    m = 4000
    vectors, weights = inputs(11, 3, m)
    total = aggregate(holder.public_context_bytes(), encryptors[:3], vectors, weights)
    raw, raw_weight = holder.decrypt_sum(total, flood=False)
    flooded, flooded_weight = holder.decrypt_sum(total)
    again, _ = holder.decrypt_sum(total)
    sigma = holder.flooding_sigma(m)
    assert sigma == flooding_sigma(holder.config, m, security_bits=40) and holder.flood_security_bits == 40
    # sigma = 2^20 * (l2 bound on the raw error), which dwarfs the raw error: 1e-5 < sigma < 1e-3 here
    assert 1e-5 < sigma < 1e-3
    assert sigma > 2**20 * np.linalg.norm(raw - exact(vectors, weights)[0])
    noise = np.append(flooded - raw, flooded_weight - raw_weight)
    assert np.std(noise) == pytest.approx(sigma, rel=0.1)
    assert abs(np.mean(noise)) < 5 * sigma / math.sqrt(noise.size)
    assert not np.array_equal(flooded, again)  # fresh CSPRNG noise per decryption
    # lambda + 10 multiplies sigma by 2^5 (and a little more through the 2^-lambda tail term of E_2)
    assert 32 * sigma < flooding_sigma(holder.config, m, security_bits=50) < 40 * sigma
    # sigma grows with sqrt(#chunks) and sqrt(max_clients), never with the data
    assert flooding_sigma(holder.config, 10**5) > flooding_sigma(holder.config, 10**4) > 0
    # COMPACT: same N, chunks and max_clients, 6 fewer scale bits -> exactly 2^6 times the noise
    compact = AggregationConfig(COMPACT, MAX_CLIENTS, MAX_ABS, MAX_WEIGHT)
    assert flooding_sigma(compact, m) == pytest.approx(64 * sigma, rel=1e-12)


def test_gaussian_noise_is_standard_normal() -> None:
    sample = _gaussian_noise(20001)
    assert sample.shape == (20001,) and np.all(np.isfinite(sample))
    assert stats.kstest(sample, "norm").pvalue > 1e-6


# ---------------------------------------------------------------------------------------------
# nothing secret is printable
# ---------------------------------------------------------------------------------------------


def test_reprs_hold_no_key_or_ciphertext_bytes(holder: KeyHolder, encryptors: list[ClientEncryptor]) -> None:
    update = encryptors[0].encrypt_update(np.ones(10), 1.0)
    server = CiphertextAggregator(holder.public_context_bytes())
    server.add(update)
    total = server.result()
    secret = holder._context.serialize(save_secret_key=True)
    for obj in (holder, update, total, server, encryptors[0]):
        text = repr(obj)
        assert len(text) < 300
        for blob in (update.chunks[0], total.chunks[0], secret, holder.public_context_bytes()):
            assert repr(blob[:16])[2:-1] not in text and blob[:16].hex() not in text
