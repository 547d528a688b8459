from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, deque
from fractions import Fraction
from itertools import permutations

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from secagg.errors import ParameterError
from secagg.graph import (
    GRAPH_PRG_DOMAIN,
    NeighbourGraph,
    SecAggPlusParams,
    _scan,
    _seeded_order,
    _UniformSampler,
    choose_params,
    failure_probabilities,
    log2_failure_probabilities,
)

SEED = bytes(range(32))
seeds = st.binary(min_size=32, max_size=32)

# Frozen output of NeighbourGraph.harary(10, 4, bytes(range(32))): pins the permutation derivation
# (HKDF info, AES-CTR stream, word order, rejection rule, Fisher-Yates direction) across versions.
KAT_N10_K4 = {
    1: (2, 4, 7, 10),
    2: (1, 4, 5, 6),
    3: (5, 6, 8, 9),
    4: (1, 2, 5, 10),
    5: (2, 3, 4, 6),
    6: (2, 3, 5, 8),
    7: (1, 8, 9, 10),
    8: (3, 6, 7, 9),
    9: (3, 7, 8, 10),
    10: (1, 4, 7, 9),
}


@st.composite
def harary_args(draw: st.DrawFn, min_n: int = 3, max_n: int = 300) -> tuple[int, int, bytes]:
    n = draw(st.integers(min_n, max_n))
    k = 2 * draw(st.integers(1, (n - 1) // 2))  # even, 2 <= k <= n - 1
    return n, k, draw(seeds)


# ------------------------------------------------------------------------------------------------
# Independent reference (no code shared with secagg.graph or secagg.prg): the documented construction


def reference_order(n: int, seed: bytes) -> list[int]:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedshield/secagg/v1/prg" + GRAPH_PRG_DOMAIN
    ).derive(seed)
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def next_word() -> int:
        return int.from_bytes(stream.update(bytes(8)), "little")

    order = list(range(1, n + 1))
    for i in range(n - 1, 0, -1):
        bound = i + 1
        while True:
            w = next_word()
            if w < 2**64 - 2**64 % bound:
                break
        j = w % bound
        order[i], order[j] = order[j], order[i]
    return order


def reference_harary(n: int, k: int, seed: bytes) -> dict[int, tuple[int, ...]]:
    order = reference_order(n, seed)
    nbrs: dict[int, set[int]] = {u: set() for u in order}
    for p in range(n):
        for d in range(1, k // 2 + 1):
            a, b = order[p], order[(p + d) % n]
            nbrs[a].add(b)
            nbrs[b].add(a)
    return {u: tuple(sorted(s)) for u, s in nbrs.items()}


def is_connected(graph: NeighbourGraph) -> bool:
    seen = {1}
    queue = deque([1])
    while queue:
        for v in graph.of(queue.popleft()):
            if v not in seen:
                seen.add(v)
                queue.append(v)
    return len(seen) == graph.num_clients


def assert_well_formed(graph: NeighbourGraph, n: int, k: int) -> None:
    assert graph.num_clients == n
    assert graph.degree == k
    assert sorted(graph.neighbours) == list(range(1, n + 1))
    for u in range(1, n + 1):
        row = graph.of(u)
        assert len(row) == k
        assert list(row) == sorted(set(row))  # sorted, no repeats
        assert u not in row
        assert all(1 <= v <= n for v in row)
        assert all(u in graph.of(v) for v in row)  # symmetric


# ------------------------------------------------------------------------------------------------
# graph structure


@given(harary_args())
def test_harary_is_regular_symmetric_connected(args: tuple[int, int, bytes]) -> None:
    n, k, seed = args
    graph = NeighbourGraph.harary(n, k, seed)
    assert_well_formed(graph, n, k)
    assert is_connected(graph)


@given(harary_args(max_n=120))
def test_harary_matches_independent_reference(args: tuple[int, int, bytes]) -> None:
    n, k, seed = args
    assert dict(NeighbourGraph.harary(n, k, seed).neighbours) == reference_harary(n, k, seed)


@given(harary_args())
def test_harary_is_deterministic_in_the_seed(args: tuple[int, int, bytes]) -> None:
    n, k, seed = args
    assert NeighbourGraph.harary(n, k, seed) == NeighbourGraph.harary(n, k, bytes(seed))


@given(harary_args(min_n=20), seeds)
def test_different_seeds_give_different_graphs(args: tuple[int, int, bytes], other: bytes) -> None:
    # For n >= 20 and k <= n - 2 there are >= 19!/2 labelled Harary graphs (>= 6e8 for k = n - 2),
    # so two distinct seeds colliding would point at the seed being ignored.
    n, k, seed = args
    if other == seed or k > n - 2:
        return
    assert NeighbourGraph.harary(n, k, seed) != NeighbourGraph.harary(n, k, other)


def test_known_answer_n10_k4() -> None:
    graph = NeighbourGraph.harary(10, 4, SEED)
    assert dict(graph.neighbours) == KAT_N10_K4
    assert reference_harary(10, 4, SEED) == KAT_N10_K4


@pytest.mark.parametrize("n", [2, 3, 4, 5, 17, 40])
def test_complete_equals_harary_with_large_degree(n: int) -> None:
    complete = NeighbourGraph.complete(n)
    assert_well_formed(complete, n, n - 1)
    for u in range(1, n + 1):
        assert complete.of(u) == tuple(v for v in range(1, n + 1) if v != u)
    for k in {n - 1, n, n + 1, 3 * n}:
        if k >= 1:
            assert NeighbourGraph.harary(n, k, SEED) == complete


def test_even_degree_n_minus_1_is_complete() -> None:
    assert NeighbourGraph.harary(11, 10, SEED) == NeighbourGraph.complete(11)


def test_degree_n_minus_2_is_complete_minus_matching() -> None:
    n = 12
    graph = NeighbourGraph.harary(n, n - 2, SEED)
    assert_well_formed(graph, n, n - 2)
    missing = {u: set(range(1, n + 1)) - set(graph.of(u)) - {u} for u in range(1, n + 1)}
    assert all(len(m) == 1 for m in missing.values())
    assert all(missing[next(iter(m))] == {u} for u, m in missing.items())


def test_large_graph_is_fast_and_regular() -> None:
    start = time.perf_counter()
    graph = NeighbourGraph.harary(10_000, 100, SEED)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0
    adj = np.array([graph.of(u) for u in range(1, 10_001)])
    assert adj.shape == (10_000, 100)
    assert np.all(np.diff(adj, axis=1) > 0)
    # Symmetry via edge encodings; regularity by the shape.
    owners = np.repeat(np.arange(1, 10_001), 100)
    fwd = np.sort(owners * 10_001 + adj.ravel())
    bwd = np.sort(adj.ravel() * 10_001 + owners)
    assert np.array_equal(fwd, bwd)


def test_of_and_are_neighbours() -> None:
    graph = NeighbourGraph.harary(10, 4, SEED)
    for u in range(1, 11):
        for v in range(1, 11):
            assert graph.are_neighbours(u, v) == (v in KAT_N10_K4[u])
    assert not graph.are_neighbours(3, 3)
    assert graph.of(np.int64(1)) == KAT_N10_K4[1]  # type: ignore[arg-type]
    for bad in (0, 11, -1):
        with pytest.raises(ParameterError, match="client_id"):
            graph.of(bad)
    with pytest.raises(ParameterError, match=r"\bb\b"):
        graph.are_neighbours(1, 11)
    with pytest.raises(TypeError):
        graph.of(True)
    with pytest.raises(TypeError):
        graph.of("1")  # type: ignore[arg-type]


def test_neighbours_are_read_only() -> None:
    graph = NeighbourGraph.harary(10, 4, SEED)
    with pytest.raises(TypeError):
        graph.neighbours[1] = (2,)  # type: ignore[index]


@pytest.mark.parametrize(
    ("n", "k", "seed", "exc", "pattern"),
    [
        (1, 2, SEED, ParameterError, "num_clients"),
        (0, 2, SEED, ParameterError, "num_clients"),
        (10, 3, SEED, ParameterError, "degree must be even"),
        (10, 0, SEED, ParameterError, r"degree must be in \[1, num_clients - 1\]"),
        (10, -2, SEED, ParameterError, "degree"),
        (10, 4, SEED[:31], ParameterError, "seed must be exactly 32 bytes, got 31"),
        (10, 4, SEED + b"\x00", ParameterError, "seed must be exactly 32 bytes, got 33"),
        (10, 20, b"short", ParameterError, "seed"),  # a large k does not skip the seed check
        (10, 4, bytearray(SEED), TypeError, "seed"),
        (10.0, 4, SEED, TypeError, "num_clients"),
        (10, True, SEED, TypeError, "degree"),
    ],
)
def test_harary_rejects_bad_arguments(n: object, k: object, seed: object, exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        NeighbourGraph.harary(n, k, seed)  # type: ignore[arg-type]


def test_direct_construction_validates_and_copies() -> None:
    good = dict(KAT_N10_K4)
    graph = NeighbourGraph(10, 4, good)
    assert graph == NeighbourGraph.harary(10, 4, SEED)
    good[1] = (3, 5, 7, 9)  # later mutation of the caller's dict must not leak in
    assert graph.of(1) == KAT_N10_K4[1]
    # numpy ids are accepted and stored as plain ints.
    from_numpy = NeighbourGraph(10, 4, {u: tuple(np.array(r).tolist()) for u, r in KAT_N10_K4.items()})
    assert all(type(v) is int for row in from_numpy.neighbours.values() for v in row)


@pytest.mark.parametrize(
    ("client", "row", "pattern"),
    [
        (1, (2, 4, 7, 9), "symmetric"),
        (1, (1, 4, 7, 10), "self loops"),
        (1, (4, 2, 7, 10), "strictly increasing"),
        (1, (2, 2, 7, 10), "strictly increasing"),
        (1, (2, 4, 7), "exactly degree"),
        (1, (2, 4, 7, 11), r"\[1, 10\]"),
        (1, (2.0, 4.0, 7.0, 10.0), "integer"),
        (11, (1, 2, 3, 4), "keys"),
    ],
)
def test_direct_construction_rejects_malformed_graphs(
    client: int, row: tuple[object, ...], pattern: str
) -> None:
    neighbours: dict[int, tuple[object, ...]] = {**KAT_N10_K4, client: row}
    with pytest.raises(ParameterError, match=pattern):
        NeighbourGraph(10, 4, neighbours)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# the seeded sampler and permutation


def test_sampler_rejects_the_biased_top_of_the_range() -> None:
    sampler = _UniformSampler(SEED, 0)
    sampler._words = [2**64 - 1, 5]  # 2^64 mod 3 == 1, so 2^64 - 1 is the one rejected word for bound 3
    sampler._pos = 0
    assert sampler.below(3) == 5 % 3
    sampler._words = [2**64 - 2]
    sampler._pos = 0
    assert sampler.below(3) == (2**64 - 2) % 3


def test_sampler_continues_the_stream_after_refill() -> None:
    sampler = _UniformSampler(SEED, 0)  # only the spare words up front: forces several refills
    got = [sampler.below(2**40) for _ in range(100)]
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedshield/secagg/v1/prg" + GRAPH_PRG_DOMAIN
    ).derive(SEED)
    stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(bytes(800))
    words = [int.from_bytes(stream[8 * i : 8 * i + 8], "little") for i in range(100)]
    assert got == [w % 2**40 for w in words]  # 2^40 divides 2^64: no rejections


def test_permutation_is_uniform() -> None:
    # 24 orders of 4 elements, 4800 public seeds: chi-square goodness of fit. Fixed seeds, so the
    # outcome is deterministic; a biased shuffle (e.g. j = below(n) for every i) fails by far.
    counts = Counter(
        tuple(_seeded_order(4, hashlib.sha256(i.to_bytes(4, "little")).digest())) for i in range(4800)
    )
    observed = [counts[p] for p in permutations(range(1, 5))]
    assert sum(observed) == 4800
    assert stats.chisquare(observed).pvalue > 1e-4


# ------------------------------------------------------------------------------------------------
# failure probabilities


def exact_corr(n: int, k: int, t: int, p_drop: Fraction) -> Fraction:
    p = 1 - p_drop
    return n * sum((math.comb(k, j) * p**j * p_drop ** (k - j) for j in range(t)), Fraction(0))


def exact_sec(n: int, k: int, t: int, corrupted: int) -> Fraction:
    tail = sum(
        (Fraction(math.comb(corrupted, j) * math.comb(n - 1 - corrupted, k - j)) for j in range(t, k + 1)),
        Fraction(0),
    )
    return (n - corrupted) * tail / math.comb(n - 1, k)


def test_failure_probabilities_match_hand_computation() -> None:
    n, k, t = 20, 6, 4
    corr, sec = failure_probabilities(n, k, t, 0.05, 0.2)  # K = 4 corrupted
    # By hand: 20 * sum_{j<4} C(6,j) .95^j .05^(6-j) and 16 * C(4,4) C(15,2) / C(19,6).
    hand_corr = 20 * sum(math.comb(6, j) * 0.95**j * 0.05 ** (6 - j) for j in range(4))
    hand_sec = 16 * math.comb(4, 4) * math.comb(15, 2) / math.comb(19, 6)
    assert corr == pytest.approx(hand_corr, rel=1e-10)
    assert sec == pytest.approx(hand_sec, rel=1e-10)
    assert corr == pytest.approx(float(exact_corr(n, k, t, Fraction(5, 100))), rel=1e-10)
    assert sec == pytest.approx(float(exact_sec(n, k, t, 4)), rel=1e-10)


def exact_log2(value: Fraction) -> float:
    # math.log2 takes arbitrarily large ints, so this is exact far below float64's range.
    return math.log2(value.numerator) - math.log2(value.denominator)


@pytest.mark.parametrize(
    ("n", "k", "t", "drop", "gamma"),
    [
        (1000, 200, 150, Fraction(1, 100), Fraction(1, 5)),  # both around 2^-170 .. 2^-280
        (5000, 400, 201, Fraction(3, 10), Fraction(1, 20)),  # security near 2^-630
        (5000, 400, 300, Fraction(1, 100_000), Fraction(1, 10)),  # correctness below 2^-1074
    ],
)
def test_tiny_probabilities_match_exact_rationals(
    n: int, k: int, t: int, drop: Fraction, gamma: Fraction
) -> None:
    log_corr, log_sec = log2_failure_probabilities(n, k, t, float(drop), float(gamma))
    want_corr = exact_log2(exact_corr(n, k, t, drop))
    want_sec = exact_log2(exact_sec(n, k, t, math.floor(gamma * n)))
    # float(drop) differs from the rational in the last bits; that moves log2 by ~1e-13 per factor.
    assert log_corr == pytest.approx(want_corr, rel=1e-9)
    assert log_sec == pytest.approx(want_sec, rel=1e-9)
    corr, sec = failure_probabilities(n, k, t, float(drop), float(gamma))
    for log2_p, p in ((log_corr, corr), (log_sec, sec)):
        assert p == (0.0 if log2_p < -1000 else pytest.approx(2.0**log2_p, rel=1e-9))


def test_correctness_bound_against_monte_carlo() -> None:
    n, k, t, drop = 20, 10, 6, 0.15
    graph = NeighbourGraph.harary(n, k, SEED)
    adj = np.array([graph.of(u) for u in range(1, n + 1)]) - 1
    rng = np.random.default_rng(20240611)  # test-only randomness for the simulated dropouts
    trials = 20_000
    alive = rng.random((trials, n)) >= drop
    survivors = alive[:, adj].sum(axis=2)  # (trials, n): surviving neighbours of each client
    stuck = survivors < t
    bound, _ = failure_probabilities(n, k, t, drop, 0.0)
    # Union bound over clients >= P[some client cannot be unmasked] (one-sided).
    p_any = stuck.any(axis=1).mean()
    assert bound >= p_any - 3 * math.sqrt(p_any * (1 - p_any) / trials)
    # Informative here (not capped at 1), though loose: neighbouring clients' failures are positively
    # correlated, which the union bound ignores.
    assert bound < 1.0 and p_any > bound / 4
    # The per-client probability is exact, not a bound: two-sided, on client 1's i.i.d. indicators.
    p_one = stuck[:, 0].mean()
    per_client = bound / n
    assert abs(p_one - per_client) < 4 * math.sqrt(per_client * (1 - per_client) / trials)


def test_security_bound_against_monte_carlo() -> None:
    # The adversary fixes its K clients first; then the public seed (hence the permutation) is drawn.
    n, k, t, gamma = 20, 6, 4, 0.3
    corrupted = math.floor(gamma * n)
    is_bad = np.zeros(n + 1, dtype=bool)
    is_bad[1 : corrupted + 1] = True
    rng = np.random.default_rng(7)
    trials = 3000
    exposed = np.zeros((trials, n - corrupted), dtype=bool)
    for r in range(trials):
        graph = NeighbourGraph.harary(n, k, rng.bytes(32))
        for i, u in enumerate(range(corrupted + 1, n + 1)):
            exposed[r, i] = is_bad[list(graph.of(u))].sum() >= t
    _, bound = failure_probabilities(n, k, t, 0.0, gamma)
    p_any = exposed.any(axis=1).mean()
    assert bound >= p_any - 3 * math.sqrt(p_any * (1 - p_any) / trials)
    # Per honest client the hypergeometric law is exact (uniform k-subset of the other n - 1).
    per_client = bound / (n - corrupted)
    assert per_client == pytest.approx(float(stats.hypergeom.sf(t - 1, n - 1, corrupted, k)), rel=1e-9)
    p_one = exposed[:, 0].mean()
    assert abs(p_one - per_client) < 4 * math.sqrt(per_client * (1 - per_client) / trials)


def test_complete_graph_security_is_the_classic_threshold_condition() -> None:
    n = 30  # K = 6 corrupted; on the complete graph every one of them is a neighbour
    for t in range(15, 30):
        _, sec = failure_probabilities(n, n - 1, t, 0.1, 0.2)
        assert sec == (0.0 if t > 6 else 1.0)
    _, log_sec = log2_failure_probabilities(n, n - 1, 16, 0.1, 0.2)
    assert log_sec == -math.inf


def test_zero_rates_give_zero_failure() -> None:
    assert failure_probabilities(50, 10, 6, 0.0, 0.0) == (0.0, 0.0)
    assert log2_failure_probabilities(50, 10, 6, 0.0, 0.0) == (-math.inf, -math.inf)


def test_bounds_are_monotone_in_the_threshold() -> None:
    corr = [failure_probabilities(200, 40, t, 0.2, 0.2)[0] for t in range(21, 41)]
    sec = [failure_probabilities(200, 40, t, 0.2, 0.2)[1] for t in range(21, 41)]
    assert corr == sorted(corr)
    assert sec == sorted(sec, reverse=True)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        ((1, 1, 1, 0.1, 0.1), "num_clients"),
        ((10, 10, 6, 0.1, 0.1), r"degree must be in \[1, num_clients - 1\] = \[1, 9\]"),
        ((10, 5, 3, 0.1, 0.1), "degree must be even"),
        ((10, 4, 2, 0.1, 0.1), r"threshold must be in \(degree/2, degree\] = \[3, 4\]"),
        ((10, 4, 5, 0.1, 0.1), "threshold"),
        ((10, 4, 3, 1.0, 0.1), r"dropout_rate must be in \[0, 1\)"),
        ((10, 4, 3, -0.1, 0.1), "dropout_rate"),
        ((10, 4, 3, float("nan"), 0.1), "dropout_rate"),
        ((10, 4, 3, 0.1, 1.0), r"corrupt_fraction must be in \[0, 1\)"),
    ],
)
def test_failure_probabilities_reject_bad_inputs(args: tuple[float, ...], pattern: str) -> None:
    with pytest.raises(ParameterError, match=pattern):
        failure_probabilities(*args)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# choose_params


def feasible(p: SecAggPlusParams, k: int, sec_bits: int, corr_bits: int) -> bool:
    for t in range(k // 2 + 1, k + 1):
        lc, ls = log2_failure_probabilities(p.num_clients, k, t, p.dropout_rate, p.corrupt_fraction)
        if lc <= -corr_bits and ls <= -sec_bits:
            return True
    return False


@pytest.mark.parametrize("n", [100, 500, 1000, 10_000])
@pytest.mark.parametrize(("drop", "gamma"), [(0.1, 0.05), (0.3, 0.05), (0.05, 0.3)])
def test_choose_params_meets_targets_minimally(n: int, drop: float, gamma: float) -> None:
    p = choose_params(n, dropout_rate=drop, corrupt_fraction=gamma)
    if not p.meets_targets:  # only the small cohort at a high dropout rate
        assert (n, drop) == (100, 0.3) and p.is_complete
        return
    assert p.degree % 2 == 0 or p.degree == n - 1
    assert p.degree // 2 < p.threshold <= p.degree
    assert p.log2_security_failure <= -40 and p.log2_correctness_failure <= -20
    assert p.security_failure <= 2.0**-40 and p.correctness_failure <= 2.0**-20
    assert (p.correctness_failure, p.security_failure) == failure_probabilities(
        n, p.degree, p.threshold, drop, gamma
    )
    if p.degree > 2:  # the next smaller even degree does not work for any threshold
        assert not feasible(p, p.degree - 2, 40, 20)
    assert p.graph(SEED).degree == p.degree


def test_choose_params_respects_other_targets() -> None:
    p = choose_params(1000, security_bits=80, correctness_bits=30)
    assert p.meets_targets and p.log2_security_failure <= -80 and p.log2_correctness_failure <= -30
    assert p.degree >= choose_params(1000).degree


@pytest.mark.parametrize("drop", [0.1, 0.3])
def test_degree_grows_logarithmically(drop: float) -> None:
    ks = [choose_params(n, dropout_rate=drop, corrupt_fraction=0.05).degree for n in (1000, 10_000, 100_000)]
    assert ks == sorted(ks)
    # Each 10x in n adds a small, roughly constant step to k (k ~ a + b log n) ...
    steps = [ks[1] - ks[0], ks[2] - ks[1]]
    assert max(steps) <= 0.15 * ks[0]
    assert abs(steps[1] - steps[0]) <= 8
    # ... so k stays a vanishing fraction of n.
    assert ks[0] < 0.25 * 1000 and ks[2] < 0.003 * 100_000
    if drop == 0.1:
        assert choose_params(100).degree <= ks[0] < 50


@pytest.mark.parametrize("n", [60, 300, 2000])
def test_choose_params_is_monotone_in_the_rates(n: int) -> None:
    by_drop = [choose_params(n, dropout_rate=d).degree for d in (0.0, 0.05, 0.1, 0.2, 0.3, 0.4)]
    assert by_drop == sorted(by_drop)
    by_gamma = [choose_params(n, corrupt_fraction=g).degree for g in (0.0, 0.05, 0.2, 0.4, 0.6)]
    assert by_gamma == sorted(by_gamma)


def test_choose_params_falls_back_to_the_complete_graph() -> None:
    p = choose_params(10)  # ten clients cannot reach 2^-20 at 10% dropout
    assert p.is_complete and p.degree == 9 and not p.meets_targets
    assert 4 < p.threshold <= 9
    assert "NOT MET" in p.describe() and "\n" not in p.describe()
    assert p.graph(SEED) == NeighbourGraph.complete(10)
    # gamma + delta >= 1: infeasible for every k; the prefilter keeps this fast even for large n.
    start = time.perf_counter()
    big = choose_params(20_000, dropout_rate=0.1, corrupt_fraction=0.9)
    assert time.perf_counter() - start < 3.0
    assert big.is_complete and not big.meets_targets


@given(
    st.integers(2, 160),
    st.sampled_from([0.0, 0.01, 0.1, 0.25, 0.4, 0.49]),
    st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.8, 0.95]),
    st.integers(1, 60),
    st.integers(1, 40),
)
def test_prefilter_never_changes_the_answer(n: int, drop: float, gamma: float, sb: int, cb: int) -> None:
    assert _scan(n, drop, gamma, sb, cb, prefilter=True) == _scan(n, drop, gamma, sb, cb, prefilter=False)


def test_describe_is_one_readable_line() -> None:
    p = choose_params(1000)
    line = p.describe()
    assert "\n" not in line
    assert f"k={p.degree}" in line and f"t={p.threshold}" in line and "targets met" in line
    assert f"2^{p.log2_correctness_failure:.1f}" in line
    assert f"2^{p.log2_security_failure:.1f}" in line


@pytest.mark.parametrize(
    ("kwargs", "exc", "pattern"),
    [
        ({"num_clients": 1}, ParameterError, "num_clients must be >= 2"),
        ({"num_clients": 100, "dropout_rate": 0.5}, ParameterError, "dropout_rate must be < 0.5"),
        ({"num_clients": 100, "dropout_rate": 1.0}, ParameterError, r"dropout_rate must be in \[0, 1\)"),
        ({"num_clients": 100, "corrupt_fraction": -0.01}, ParameterError, "corrupt_fraction"),
        ({"num_clients": 100, "corrupt_fraction": 1.0}, ParameterError, "corrupt_fraction"),
        ({"num_clients": 100, "security_bits": 0}, ParameterError, r"security_bits must be in \[1, 512\]"),
        ({"num_clients": 100, "correctness_bits": 0}, ParameterError, "correctness_bits"),
        ({"num_clients": 100, "dropout_rate": "0.1"}, TypeError, "dropout_rate"),
        ({"num_clients": True}, TypeError, "num_clients"),
    ],
)
def test_choose_params_rejects_bad_inputs(kwargs: dict[str, object], exc: type, pattern: str) -> None:
    with pytest.raises(exc, match=pattern):
        choose_params(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("n", "drop", "gamma"), [(1000, 0.1, 0.05), (500, 0.2, 0.3), (10_000, 0.05, 0.45)])
def test_threshold_maximises_the_smaller_margin(n: int, drop: float, gamma: float) -> None:
    p = choose_params(n, dropout_rate=drop, corrupt_fraction=gamma)
    k = p.degree

    def margin(t: int) -> float:
        lc, ls = log2_failure_probabilities(n, k, t, drop, gamma)
        return min(-20 - lc, -40 - ls)

    assert all(margin(p.threshold) >= margin(t) for t in range(k // 2 + 1, k + 1))


def test_threshold_ties_go_to_the_smallest() -> None:
    # Fallback with K = 180 of 200 corrupted: on the complete graph every t > 180 has security bound 0
    # and a correctness bound capped at 1, so all of them tie on the smaller margin.
    p = choose_params(200, dropout_rate=0.1, corrupt_fraction=0.9)
    assert p.is_complete and not p.meets_targets
    assert (p.threshold, p.security_failure, p.correctness_failure) == (181, 0.0, 1.0)


def test_zero_bounds_are_described_as_zero() -> None:
    p = choose_params(100, dropout_rate=0.0, corrupt_fraction=0.05)  # K = 5: t = 6 > K, no dropouts
    assert (p.degree, p.threshold, p.correctness_failure, p.security_failure) == (6, 6, 0.0, 0.0)
    assert p.log2_security_failure == -math.inf
    assert "<= 0," in p.describe() and "<= 0;" in p.describe()
