"""The SecAgg+ communication graph and the choice of its degree and threshold.

Plain SecAgg (Bonawitz et al., CCS 2017) secret-shares every client's keys with *every* other client,
which costs O(n) work and messages per client. SecAgg+ (Bell et al., "Secure Single-Server Aggregation
with (Poly)Logarithmic Overhead", CCS 2020) shares them only with the client's k neighbours in a sparse
random graph, and shows that k = O(log n) neighbours suffice. The deployed variant (Google, Flower)
replaces Bell et al.'s Erdos-Renyi graph with a *Harary graph on randomly permuted nodes*: exactly
k-regular (every client does the same amount of work) and, because of the random permutation, each
client's neighbourhood is still a uniformly random k-subset of the others, which is all the analysis
below needs.

Graph construction (version 1, pinned by a known-answer test)::

    stream  = keystream_bytes(seed, ..., domain=b"/graph/v1/harary-permutation")   # secagg.prg
    word_m  = little-endian uint64 from stream[8m : 8m+8], m = 0, 1, 2, ...
    below(b): take the next word w; reject and take another while w >= 2^64 - (2^64 mod b);
              return w mod b                                     # exactly uniform on [0, b)
    order   = [1, 2, ..., n]; for i = n-1 down to 1: j = below(i+1); swap order[i], order[j]
    the client at position p is order[p]; it is joined to the clients at positions p +- 1 .. p +- k/2
    (mod n).

The seed is *public* (the server broadcasts it, or it is derived from the round transcript): the graph
is not a secret, but every party must compute the same graph from it, today and after a numpy upgrade,
and a malicious server must not be able to bias it beyond choosing the seed. Hence a cryptographic PRG
rather than :mod:`numpy.random` (whose streams are not frozen across versions) or :mod:`random`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import stats

from secagg.errors import ParameterError
from secagg.prg import SEED_BYTES, keystream_bytes

__all__ = [
    "GRAPH_PRG_DOMAIN",
    "NeighbourGraph",
    "SecAggPlusParams",
    "choose_params",
    "failure_probabilities",
    "log2_failure_probabilities",
]

#: PRG domain of the permutation; bump the version if the construction in the module docstring changes.
GRAPH_PRG_DOMAIN: Final = b"/graph/v1/harary-permutation"

_WORD_BYTES: Final = 8
_WORD_RANGE: Final = 1 << 64
# A few spare words so that a rejection (probability < n / 2^64 per draw) rarely needs a second call.
_SPARE_WORDS: Final = 8
_LN2: Final = math.log(2.0)
# float64 underflows below ~2^-1074; report probabilities whose log2 is below this as exactly 0.0.
_MIN_LOG2_FLOAT: Final = -1000.0


# --------------------------------------------------------------------------------------------------
# validation helpers (messages name the parameter and the allowed range, never a seed)


def _check_int(name: str, value: object) -> int:
    # bool is an int subclass; a stray True would silently mean 1. numpy integers are accepted because
    # ids often come out of arrays.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    return int(value)


def _check_num_clients(num_clients: object) -> int:
    n = _check_int("num_clients", num_clients)
    if n < 2:
        raise ParameterError(f"num_clients must be >= 2, got {n}")
    return n


def _check_degree(degree: object, n: int) -> int:
    """A degree a graph can have: even in [2, n-1], or exactly n-1 (the complete graph)."""
    k = _check_int("degree", degree)
    if not 1 <= k <= n - 1:
        raise ParameterError(f"degree must be in [1, num_clients - 1] = [1, {n - 1}], got {k}")
    # A circulant graph on the offsets +-1..+-k/2 has even degree; an odd k is only realisable here as
    # the complete graph.
    if k != n - 1 and k % 2 != 0:
        raise ParameterError(
            f"degree must be even (or num_clients - 1 = {n - 1} for the complete graph), got {k}"
        )
    return k


def _check_threshold(threshold: object, k: int) -> int:
    t = _check_int("threshold", threshold)
    # t > k/2: two disjoint sets of responders cannot both reach t, so a server that lies about who
    # dropped cannot obtain both a client's self-mask seed and its masking key (Bonawitz et al. 2017).
    if not (2 * t > k and t <= k):
        raise ParameterError(f"threshold must be in (degree/2, degree] = [{k // 2 + 1}, {k}], got {t}")
    return t


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise TypeError(f"{name} must be a float, not {type(value).__name__}")
    rate = float(value)
    if not (0.0 <= rate < 1.0):  # also rejects NaN
        raise ParameterError(f"{name} must be in [0, 1), got {rate!r}")
    return rate


def _check_bits(name: str, value: object) -> int:
    bits = _check_int(name, value)
    if not 1 <= bits <= 512:
        raise ParameterError(f"{name} must be in [1, 512], got {bits}")
    return bits


def _check_seed(seed: object) -> bytes:
    if not isinstance(seed, bytes):
        raise TypeError(f"seed must be bytes, not {type(seed).__name__}")
    if len(seed) != SEED_BYTES:
        raise ParameterError(f"seed must be exactly {SEED_BYTES} bytes, got {len(seed)} bytes")
    return seed


# --------------------------------------------------------------------------------------------------
# the seeded permutation


class _UniformSampler:
    """Exactly uniform integers below a bound, from the PRG stream (see the module docstring)."""

    def __init__(self, seed: bytes, expected_draws: int) -> None:
        self._seed = seed
        self._words: list[int] = []
        self._pos = 0
        self._refill(expected_draws + _SPARE_WORDS)

    def _refill(self, num_words: int) -> None:
        # The stream has the prefix property, so asking for a longer stream and skipping what was
        # already consumed continues it exactly. A refill needs more than _SPARE_WORDS rejections, each
        # of probability < n / 2^64: it never happens in practice, but the result stays exact if it does.
        data = keystream_bytes(self._seed, num_words * _WORD_BYTES, domain=GRAPH_PRG_DOMAIN)
        # Python ints: the Fisher-Yates loop does scalar arithmetic, which is slow on numpy scalars.
        self._words = np.frombuffer(data, dtype="<u8").tolist()

    def below(self, bound: int) -> int:
        # Rejection sampling: `limit` is the largest multiple of `bound` <= 2^64, so `w mod bound` is
        # exactly uniform for accepted w. Plain `w mod bound` would favour small values by ~bound/2^64.
        limit = _WORD_RANGE - _WORD_RANGE % bound
        while True:
            if self._pos == len(self._words):
                self._refill(2 * len(self._words))
            w = self._words[self._pos]
            self._pos += 1
            if w < limit:
                return w % bound


def _seeded_order(num_clients: int, seed: bytes) -> list[int]:
    """Client ids 1..n in the seeded Fisher-Yates order (``order[p]`` is the client at position p)."""
    order = list(range(1, num_clients + 1))
    sampler = _UniformSampler(seed, num_clients - 1)
    for i in range(num_clients - 1, 0, -1):  # n <= 1e5: a Python loop is a few tens of ms
        j = sampler.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


# --------------------------------------------------------------------------------------------------
# the graph


@dataclass(frozen=True)
class NeighbourGraph:
    """An undirected k-regular graph on the clients 1..n (ids start at 1: they are Shamir x-coordinates).

    ``neighbours[u]`` is the sorted tuple of u's neighbours; the relation is symmetric and irreflexive.
    Construct with :meth:`complete` (plain SecAgg) or :meth:`harary` (SecAgg+). Direct construction is
    allowed (e.g. for a graph received over the wire) and is fully validated; the mapping is copied
    into a read-only view so the frozen object cannot be changed through it.

    Memory is one tuple of k shared int objects per client: ~8 n k bytes (8 MB for n = 10^4, k = 100).
    The complete graph therefore costs ~8 n^2 bytes and is meant for the small cohorts of plain SecAgg.
    """

    num_clients: int
    degree: int
    neighbours: Mapping[int, tuple[int, ...]] = field(repr=False)

    def __post_init__(self) -> None:
        # Only direct construction lands here (the classmethods build through `_trusted`), so a graph
        # from outside is checked completely before anyone relies on it.
        n = _check_num_clients(self.num_clients)
        k = _check_degree(self.degree, n)
        if not isinstance(self.neighbours, Mapping):
            raise TypeError(f"neighbours must be a Mapping, not {type(self.neighbours).__name__}")
        if set(self.neighbours) != set(range(1, n + 1)):
            raise ParameterError(f"neighbours must have exactly the keys 1..num_clients = 1..{n}")
        rows = [self.neighbours[u] for u in range(1, n + 1)]
        if any(not isinstance(row, tuple) or len(row) != k for row in rows):
            raise ParameterError(f"neighbours[u] must be a tuple of exactly degree = {k} ids for every u")
        adj = np.asarray(rows).reshape(n, k)
        if adj.dtype.kind not in "iu":  # floats, strings, objects
            raise ParameterError("neighbours[u] must contain only integer client ids")
        _check_adjacency(adj.astype(np.int64), n)
        # Rebuild from the validated array: plain ints, and a private read-only copy that later
        # mutation of the caller's dict cannot reach.
        object.__setattr__(self, "num_clients", n)
        object.__setattr__(self, "degree", k)
        object.__setattr__(self, "neighbours", _freeze(adj.tolist(), n))

    @classmethod
    def _trusted(
        cls, num_clients: int, degree: int, neighbours: dict[int, tuple[int, ...]]
    ) -> NeighbourGraph:
        # The classmethods' output is correct by construction (and property-tested), so skip the
        # O(nk log nk) re-validation and the second copy; a frozen dataclass still needs
        # object.__setattr__ to fill its fields.
        graph = object.__new__(cls)
        object.__setattr__(graph, "num_clients", num_clients)
        object.__setattr__(graph, "degree", degree)
        object.__setattr__(graph, "neighbours", MappingProxyType(neighbours))
        return graph

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def complete(cls, num_clients: int) -> NeighbourGraph:
        """Everyone is everyone's neighbour: plain SecAgg, degree n - 1."""
        n = _check_num_clients(num_clients)
        ids = tuple(range(1, n + 1))
        # Slicing one tuple shares its int objects, so the n^2 entries are pointers only.
        return cls._trusted(n, n - 1, {u: ids[: u - 1] + ids[u:] for u in ids})

    @classmethod
    def harary(cls, num_clients: int, degree: int, seed: bytes) -> NeighbourGraph:
        """The Harary graph H(n, k) on a seeded random permutation of the ids 1..n.

        For even k < n - 1, the client at position p of the permutation (module docstring) is joined to
        the clients at positions p +- 1, ..., p +- k/2 (mod n). Because the offsets 1..k/2 are distinct
        and non-zero mod n whenever k < n - 1, every client has exactly k neighbours; the graph contains
        the Hamiltonian cycle of offset 1, so it is connected (indeed k-connected).

        Any ``degree >= num_clients - 1`` gives the complete graph (the seed is still validated, so a
        caller's bad seed is not hidden by a large k). Odd ``degree < num_clients - 1`` is rejected.

        Args:
            num_clients: n >= 2.
            degree: k, even and >= 2, or >= n - 1 for the complete graph.
            seed: exactly 32 public bytes that every party agrees on.

        Raises:
            TypeError: wrongly typed arguments.
            ParameterError: n < 2, k < 1, odd k < n - 1, or a seed that is not 32 bytes.
        """
        n = _check_num_clients(num_clients)
        k = _check_int("degree", degree)
        _check_seed(seed)
        if k >= n - 1:
            return cls.complete(n)
        _check_degree(k, n)

        order = np.asarray(_seeded_order(n, seed), dtype=np.int64)
        half = k // 2
        offsets = np.concatenate([np.arange(-half, 0), np.arange(1, half + 1)])
        positions = np.arange(n)[:, None] + offsets[None, :]
        adj = order[positions % n]  # row p: the neighbours of client order[p]
        adj.sort(axis=1)
        by_id = np.empty_like(adj)
        by_id[order - 1] = adj
        return cls._trusted(n, k, _freeze(by_id.tolist(), n))

    # -- queries --------------------------------------------------------------------------------

    def _check_id(self, name: str, client_id: object) -> int:
        u = _check_int(name, client_id)
        if not 1 <= u <= self.num_clients:
            raise ParameterError(f"{name} must be a client id in [1, {self.num_clients}], got {u}")
        return u

    def of(self, client_id: int) -> tuple[int, ...]:
        """The sorted neighbours of ``client_id``; ParameterError if it is not in 1..n."""
        return self.neighbours[self._check_id("client_id", client_id)]

    def are_neighbours(self, a: int, b: int) -> bool:
        """Whether a and b share an edge (False for a == b); ParameterError for unknown ids."""
        u = self._check_id("a", a)
        v = self._check_id("b", b)
        row = self.neighbours[u]
        # Rows are sorted, so a binary search keeps this O(log k) for large k.
        i = bisect.bisect_left(row, v)
        return i < len(row) and row[i] == v


def _freeze(rows: list[list[int]], n: int) -> dict[int, tuple[int, ...]]:
    """``{u: tuple(rows[u - 1])}`` with one shared int object per id (8 bytes per entry, not ~36)."""
    ids = list(range(n + 1))
    return {u: tuple([ids[v] for v in row]) for u, row in enumerate(rows, start=1)}


def _check_adjacency(adj: npt.NDArray[np.int64], n: int) -> None:
    """Vectorised checks of an (n, k) adjacency table whose row u-1 lists the neighbours of u."""
    if adj.size == 0:
        return
    if adj.min() < 1 or adj.max() > n:
        raise ParameterError(f"neighbour ids must be in [1, num_clients] = [1, {n}]")
    if adj.shape[1] > 1 and not bool(np.all(np.diff(adj, axis=1) > 0)):
        raise ParameterError("neighbours[u] must be strictly increasing (sorted, no repeats)")
    owners = np.arange(1, n + 1, dtype=np.int64)[:, None]
    if bool(np.any(adj == owners)):
        raise ParameterError("neighbours[u] must not contain u (no self loops)")
    # Symmetric iff the multiset of directed edges equals its reverse; with rows duplicate-free both
    # encodings are sets, so sorting and comparing decides it in O(nk log nk).
    forward = np.sort((np.broadcast_to(owners, adj.shape) * (n + 1) + adj).ravel())
    backward = np.sort((adj * (n + 1) + owners).ravel())
    if not np.array_equal(forward, backward):
        raise ParameterError("neighbours must be symmetric (v in neighbours[u] iff u in neighbours[v])")


# --------------------------------------------------------------------------------------------------
# failure probabilities


def _log_lower_tails(logpmf: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``out[j] = log P[X <= j]`` from ``logpmf[j] = log P[X = j]``, j = 0..k, without underflow."""
    return np.minimum(np.logaddexp.accumulate(logpmf), 0.0)


def _log_upper_tails(logpmf: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``out[j] = log P[X >= j]`` from ``logpmf[j] = log P[X = j]``, j = 0..k, without underflow."""
    return np.minimum(np.logaddexp.accumulate(logpmf[::-1])[::-1], 0.0)


def _corrupted_count(num_clients: int, corrupt_fraction: float) -> int:
    return math.floor(corrupt_fraction * num_clients)


def _log2_tables(
    n: int, k: int, dropout_rate: float, corrupt_fraction: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """log2 of the correctness and security bounds for every threshold t = 0..k (index t).

    Computed from scipy's ``logpmf`` (log-gamma based, accurate far into the tails) and cumulative
    log-sum-exp, because scipy's ``logcdf``/``logsf`` for these distributions are ``log(cdf)`` and
    return -inf below ~1e-308, exactly where the security targets live.
    """
    support = np.arange(k + 1)
    # Correctness: surviving neighbours S ~ Bin(k, 1 - delta); fail at t iff S <= t - 1.
    survive = np.asarray(stats.binom.logpmf(support, k, 1.0 - dropout_rate), dtype=np.float64)
    lower = _log_lower_tails(survive)
    log_corr = np.empty(k + 1)
    log_corr[0] = -np.inf  # P[S < 0] = 0
    log_corr[1:] = lower[:-1]
    log_corr += math.log(n)  # union bound over the n clients

    # Security: corrupted neighbours X ~ Hypergeom(N = n-1, K, k); exposed at t iff X >= t.
    corrupted = _corrupted_count(n, corrupt_fraction)
    hyper = np.asarray(stats.hypergeom.logpmf(support, n - 1, corrupted, k), dtype=np.float64)
    log_sec = _log_upper_tails(hyper) + math.log(n - corrupted)  # union bound over honest clients

    # Cap at 1: a union bound above 1 says nothing more than "may fail".
    return np.minimum(log_corr / _LN2, 0.0), np.minimum(log_sec / _LN2, 0.0)


def _from_log2(log2_p: float) -> float:
    return 0.0 if log2_p < _MIN_LOG2_FLOAT else float(2.0**log2_p)


def log2_failure_probabilities(
    num_clients: int, degree: int, threshold: int, dropout_rate: float, corrupt_fraction: float
) -> tuple[float, float]:
    """``(log2 correctness_failure, log2 security_failure)``; -inf where the bound is exactly 0.

    See :func:`failure_probabilities` for the model; the log form never underflows.
    """
    n = _check_num_clients(num_clients)
    k = _check_degree(degree, n)
    t = _check_threshold(threshold, k)
    delta = _check_rate("dropout_rate", dropout_rate)
    gamma = _check_rate("corrupt_fraction", corrupt_fraction)
    log_corr, log_sec = _log2_tables(n, k, delta, gamma)
    return float(log_corr[t]), float(log_sec[t])


def failure_probabilities(
    num_clients: int, degree: int, threshold: int, dropout_rate: float, corrupt_fraction: float
) -> tuple[float, float]:
    """Union-bound upper bounds ``(correctness_failure, security_failure)`` for SecAgg+ on our graphs.

    Model: n clients, each with exactly k neighbours that form a uniformly random k-subset of the other
    n - 1 clients (true for :meth:`NeighbourGraph.harary`, whose permutation is uniform, and trivially
    for the complete graph); each client's secrets are t-out-of-k Shamir-shared among its neighbours.

    * **Correctness.** Every client u must be unmasked: its self-mask seed if it survived, its masking
      key if it dropped, either way from t shares held by *surviving* neighbours. Each neighbour drops
      independently with probability delta, so the survivors are S ~ Bin(k, 1 - delta) and

          correctness_failure <= n * P[Bin(k, 1 - delta) < t].

    * **Security** (honest-but-curious server colluding with K = floor(gamma * n) clients chosen before
      the graph seed is drawn). The coalition learns an honest client's self-mask seed *and* masking
      key (hence its input) only if at least t of its k neighbours are corrupted. With u honest, all K
      corrupted clients are among the n - 1 others, and u's neighbourhood is a uniform k-subset of
      them, so the number of corrupted neighbours is *exactly* X ~ Hypergeom(N = n - 1, K, k) and

          security_failure <= (n - K) * P[Hypergeom(n - 1, K, k) >= t]

      (a union bound over the n - K honest clients; tighter than n * P and still an upper bound).
      We use the hypergeometric rather than Bin(k, gamma) because it is exact, not an approximation:
      Bin(k, gamma) undercounts when K/(n - 1) > gamma, and Hoeffding's domination of hypergeometric
      by binomial holds for convex functions, not for every tail. It also gets the complete graph
      right: there k = n - 1, X = K with certainty, so the failure is 0 when t > K and 1 otherwise,
      the classic SecAgg condition, whereas a binomial would report a spurious positive probability.

    Not modelled: Bell et al.'s additional requirement that the honest survivors' subgraph stays
    connected (otherwise the server learns separate partial sums of honest inputs). On H(n, k) that
    needs two disjoint runs of k/2 consecutive positions that are all corrupted or dropped, union
    bound (n^2 / 2) * E[delta^(k - J)] with J ~ Hypergeom(n, K, k). For :func:`choose_params`'s
    output at dropout rates >= 0.01 this is >= 30 bits below the security bound here (e.g. n = 10^4,
    delta = 0.1, gamma = 0.05: 2^-92 against 2^-45), but with no dropouts at all (delta = 0, where
    t = k) it can be the larger one (same n and gamma: about 2^-35 against 2^-47).

    Both bounds are capped at 1 and returned as floats; a bound below ~2^-1000 is reported as 0.0 (use
    :func:`log2_failure_probabilities` for the exact exponent).

    Raises:
        TypeError: wrongly typed arguments.
        ParameterError: n < 2; k not in [1, n - 1] or odd and not n - 1; t not in (k/2, k]; a rate
            outside [0, 1).
    """
    log_corr, log_sec = log2_failure_probabilities(
        num_clients, degree, threshold, dropout_rate, corrupt_fraction
    )
    return _from_log2(log_corr), _from_log2(log_sec)


# --------------------------------------------------------------------------------------------------
# parameter choice


@dataclass(frozen=True)
class SecAggPlusParams:
    """A SecAgg+ configuration and the failure bounds of :func:`failure_probabilities` for it.

    ``meets_targets`` is False only for :func:`choose_params`'s complete-graph fallback, when no degree
    reaches the requested ``security_bits``/``correctness_bits``; :meth:`describe` then says so.
    """

    num_clients: int
    degree: int
    threshold: int
    dropout_rate: float
    corrupt_fraction: float
    correctness_failure: float
    security_failure: float
    log2_correctness_failure: float
    log2_security_failure: float
    meets_targets: bool = True

    @property
    def is_complete(self) -> bool:
        """Whether the graph is complete, i.e. this is plain SecAgg."""
        return self.degree == self.num_clients - 1

    def graph(self, seed: bytes) -> NeighbourGraph:
        """The communication graph for this configuration from the round's public 32-byte seed."""
        if self.is_complete:
            _check_seed(seed)
            return NeighbourGraph.complete(self.num_clients)
        return NeighbourGraph.harary(self.num_clients, self.degree, seed)

    def describe(self) -> str:
        """One line: n, k, t, the rates and log2 of both failure bounds."""

        def bits(log2_p: float) -> str:
            return "0" if log2_p == -math.inf else f"2^{log2_p:.1f}"

        kind = "complete graph" if self.is_complete else "Harary graph"
        status = "targets met" if self.meets_targets else "TARGETS NOT MET (complete-graph fallback)"
        return (
            f"SecAgg+ n={self.num_clients} k={self.degree} t={self.threshold} ({kind}); "
            f"dropout={self.dropout_rate:g} corrupt={self.corrupt_fraction:g}: "
            f"P[round fails] <= {bits(self.log2_correctness_failure)}, "
            f"P[honest client exposed] <= {bits(self.log2_security_failure)}; {status}"
        )


def _candidate_degrees(n: int) -> npt.NDArray[np.int64]:
    ks = list(range(2, n, 2))  # even k <= n - 1
    if n - 1 not in ks:
        ks.append(n - 1)  # n even: the complete graph has odd degree n - 1
    return np.asarray(ks, dtype=np.int64)


def _may_be_feasible(
    n: int, ks: npt.NDArray[np.int64], delta: float, gamma: float, sec_bits: int, corr_bits: int
) -> npt.NDArray[np.bool_]:
    """A cheap necessary condition for each degree in ``ks``; False means no t can work for that k.

    Exact evaluation costs O(k) per degree, so scanning every k up to n is O(n^2) (minutes at
    n = 10^5) exactly when it matters least: when nothing is feasible. This test is O(1) per k and
    only ever errs towards True (slack of one threshold step and one bit), so at worst it wastes an
    exact evaluation; and the returned parameters are always evaluated exactly.

    * Correctness needs P[Bin(k, 1 - delta) <= t - 1] <= 2^-corr_bits / n, i.e. t - 1 below the
      q-quantile x* of the binomial (scipy/Boost ``ppf``): every feasible t has t <= x* + 1 =: T - 1.
      If T < floor(k/2) + 1, no t > k/2 is left.
    * Security decreases in t, so every feasible t has sec(t) >= sec(T') with T' = min(T, k), and
      P[H >= T'] is at least both the single term P[H = T'] and, by Markov on k - H,
      (mu - T' + 1) / (k - T' + 1) with mu = E[H] = k K / (n - 1). If (n - K) times the larger of the
      two exceeds 2 * 2^-sec_bits, the degree is out.
    """
    q = 2.0**-corr_bits / n
    x_star = np.asarray(stats.binom.ppf(q, ks, 1.0 - delta), dtype=np.float64)
    t_max = np.minimum(x_star + 2.0, ks.astype(np.float64))
    correctness_possible = t_max >= ks // 2 + 1

    corrupted = _corrupted_count(n, gamma)
    log_term = np.asarray(stats.hypergeom.logpmf(t_max, n - 1, corrupted, ks), dtype=np.float64)
    mu = ks * (corrupted / (n - 1))
    markov = np.maximum(mu - t_max + 1.0, 0.0) / (ks - t_max + 1.0)
    with np.errstate(divide="ignore"):  # log(0) = -inf is the intended "no information"
        log_tail_lb = np.maximum(log_term, np.log(markov))
    log_sec_lb = (log_tail_lb + math.log(n - corrupted)) / _LN2
    security_possible = log_sec_lb <= -sec_bits + 1.0
    return np.asarray(correctness_possible & security_possible, dtype=np.bool_)


def _best_threshold(
    k: int, log_corr: npt.NDArray[np.float64], log_sec: npt.NDArray[np.float64], corr_bits: int, sec_bits: int
) -> tuple[int, bool]:
    """The t in (k/2, k] maximising the smaller of the two margins (in bits) to the targets.

    Correctness worsens and security improves as t grows, so the maximin t sits where the two margins
    cross; it leaves slack on both sides instead of spending it all on one. Ties go to the smallest t.
    """
    ts = np.arange(k // 2 + 1, k + 1)
    # margin = log2(target) - log2(bound); +inf where the bound is exactly 0.
    margin = np.minimum(-corr_bits - log_corr[ts], -sec_bits - log_sec[ts])
    best = int(np.argmax(margin))  # first maximum = smallest t
    return int(ts[best]), bool(margin[best] >= 0.0)


def choose_params(
    num_clients: int,
    *,
    dropout_rate: float = 0.1,
    corrupt_fraction: float = 0.05,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> SecAggPlusParams:
    """The smallest degree k, and a threshold t, meeting both failure targets for n clients.

    Scans k = 2, 4, 6, ... (then n - 1, the complete graph, if n - 1 is odd) and returns the first k
    for which some t in (k/2, k] has ``security_failure <= 2^-security_bits`` and
    ``correctness_failure <= 2^-correctness_bits`` (bounds of :func:`failure_probabilities`). Among the
    feasible t it takes the one maximising the smaller margin to the two targets.

    Growth: both tails fall exponentially in k while the union bound costs only log n, so the chosen k
    is O(log n + bits) (k = 34 / 38 / 42 / 46 at n = 10^2 / 10^3 / 10^4 / 10^5 for the defaults). The
    scan evaluates exactly, in O(k) each, only the degrees that pass an O(1) necessary condition
    (:func:`_may_be_feasible`), so it stays well under a second up to n = 10^5 even when it falls back.

    Fallback: if no k <= n - 1 meets both targets (small n, or gamma + delta close to 1), the complete
    graph is returned with its maximin t and ``meets_targets=False`` (also shown by ``describe()``): a
    plain SecAgg configuration is still a meaningful answer, and the caller can see by how much it
    misses. We *raise* only when ``dropout_rate >= 0.5``: then for every k and every t > k/2 a single
    client fails to be unmasked with probability >= 1/2 (Bin(k, 1 - delta) is dominated by
    Bin(k, 1/2), whose median is k/2), so no graph makes the round even likely to complete and
    returning parameters would only hide that.

    Raises:
        TypeError: wrongly typed arguments.
        ParameterError: n < 2; a rate outside [0, 1); dropout_rate >= 0.5; bits outside [1, 512].
    """
    n = _check_num_clients(num_clients)
    delta = _check_rate("dropout_rate", dropout_rate)
    gamma = _check_rate("corrupt_fraction", corrupt_fraction)
    sec_bits = _check_bits("security_bits", security_bits)
    corr_bits = _check_bits("correctness_bits", correctness_bits)
    if delta >= 0.5:
        raise ParameterError(
            f"dropout_rate must be < 0.5 for a threshold t > degree/2 to be reachable, got {delta!r}"
        )

    return _scan(n, delta, gamma, sec_bits, corr_bits, prefilter=True)


def _scan(
    n: int, delta: float, gamma: float, sec_bits: int, corr_bits: int, *, prefilter: bool
) -> SecAggPlusParams:
    """The search of :func:`choose_params` on validated inputs (``prefilter`` off only for tests)."""
    ks = _candidate_degrees(n)
    if prefilter:
        ks = ks[_may_be_feasible(n, ks, delta, gamma, sec_bits, corr_bits)]
    for k in ks.tolist():
        log_corr, log_sec = _log2_tables(n, k, delta, gamma)
        t, ok = _best_threshold(k, log_corr, log_sec, corr_bits, sec_bits)
        if ok:
            return _params(n, k, t, delta, gamma, log_corr, log_sec, meets_targets=True)
    # Nothing met the targets, not even the complete graph (the scan's last candidate): return it.
    log_corr, log_sec = _log2_tables(n, n - 1, delta, gamma)
    t, _ = _best_threshold(n - 1, log_corr, log_sec, corr_bits, sec_bits)
    return _params(n, n - 1, t, delta, gamma, log_corr, log_sec, meets_targets=False)


def _params(
    n: int,
    k: int,
    t: int,
    delta: float,
    gamma: float,
    log_corr: npt.NDArray[np.float64],
    log_sec: npt.NDArray[np.float64],
    *,
    meets_targets: bool,
) -> SecAggPlusParams:
    lc, ls = float(log_corr[t]), float(log_sec[t])
    return SecAggPlusParams(
        num_clients=n,
        degree=k,
        threshold=t,
        dropout_rate=delta,
        corrupt_fraction=gamma,
        correctness_failure=_from_log2(lc),
        security_failure=_from_log2(ls),
        log2_correctness_failure=lc,
        log2_security_failure=ls,
        meets_targets=meets_targets,
    )
