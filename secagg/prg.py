"""Mask expansion: a 32-byte seed becomes a long vector of uniform elements of Z_{2^b}.

This is the throughput floor of pairwise-mask secure aggregation (every client expands one mask per
neighbour plus its self-mask, every round), so the keystream is produced by one AES-256-CTR call into
a numpy-owned buffer and turned into words with :func:`numpy.frombuffer`; there is no per-element Python.

Construction (version 1, frozen by ``tests/secagg/vectors/prg.json``)::

    key    = HKDF-SHA256(ikm=seed, salt=None, info=b"fedshield/secagg/v1/prg" || domain, length=32)
    stream = AES-256-CTR(key, initial counter block = 16 zero bytes) applied to zero bytes
    w      = 4 if b <= 32 else 8            (bytes per element)
    word_i = little-endian uint{8w} from stream[w*i : w*(i+1)]
    mask_i = word_i & (2^b - 1)

* **Domain separation.** ``domain`` names what the mask is for (round, pair, self-mask, ...). Distinct
  domains give independent HKDF keys, so one agreed seed can safely drive many rounds. The prefix is
  fixed, so ``info`` is an injective function of ``domain``; callers must still make their own domain
  strings unambiguous (e.g. fixed-width integers rather than decimal text glued together).
* **Fixed counter block.** Each HKDF key encrypts exactly one stream starting at counter 0; a key is
  never reused with another nonce, so a constant initial block is safe and keeps the format simple.
  CTR mode on a 128-bit counter cannot wrap for any length that fits in memory.
* **Exact uniformity.** For b <= 8w, 2^b divides 2^(8w), so masking a uniform word with ``2^b - 1``
  is exactly uniform on [0, 2^b) -- no rejection sampling, no modulo bias.
* **4-byte words for b <= 32, 8-byte words above.** Keystream generation is the protocol's cost floor,
  so a 32-bit modulus must not pay for 64-bit words: outputs are ``uint32`` for b <= 32 and ``uint64``
  for 33 <= b <= 64. The word width is a function of b alone, so two parties that agree on b (part of
  the public round configuration) expand identical masks; for a fixed word width the mask for b bits
  is the full-width mask reduced mod 2^b.
* **Prefix property.** ``expand_mask(s, n, ...)`` is the first n elements of ``expand_mask(s, m, ...)``
  for m >= n; that is what a stream cipher does and it lets a caller expand lazily.
"""

from __future__ import annotations

import functools
import sys
from typing import Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import ParameterError

__all__ = [
    "MAX_MODULUS_BITS",
    "mask_dtype",
    "PRG_INFO_PREFIX",
    "SEED_BYTES",
    "expand_mask",
    "keystream_bytes",
]

#: Length of every PRG seed. 32 bytes = 256 bits, the AES-256 key size and the X25519/HKDF output size.
SEED_BYTES: Final = 32
#: HKDF ``info`` prefix; bump the version if the construction above ever changes.
PRG_INFO_PREFIX: Final = b"fedshield/secagg/v1/prg"
#: Masks are uint32 (b <= 32) or uint64 words, so Z_{2^b} is supported up to b = 64.
MAX_MODULUS_BITS: Final = 64

_AES_BLOCK_BYTES: Final = 16
_CTR_INITIAL_BLOCK: Final = bytes(_AES_BLOCK_BYTES)
# Feed the cipher in bounded chunks so a huge request never hits an int-sized length limit in the
# backend, and so the all-zero plaintext buffer stays small; the CTR counter carries across calls.
_CHUNK_BYTES: Final = 1 << 24


def _check_seed_and_domain(seed: bytes, domain: bytes) -> None:
    # Messages deliberately never include the seed (only its length): errors end up in logs.
    if not isinstance(seed, bytes):
        raise TypeError(f"seed must be bytes, not {type(seed).__name__}")
    if len(seed) != SEED_BYTES:
        raise ParameterError(f"seed must be exactly {SEED_BYTES} bytes, got {len(seed)} bytes")
    if not isinstance(domain, bytes):
        raise TypeError(f"domain must be bytes, not {type(domain).__name__}")


def _check_count(name: str, value: int) -> None:
    # bool is an int subclass; a stray True would silently mean 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0:
        raise ParameterError(f"{name} must be >= 0, got {value}")


def _derive_key(seed: bytes, domain: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PRG_INFO_PREFIX + domain)
    return hkdf.derive(seed)


@functools.cache
def _zeros() -> bytes:
    # One shared all-zero plaintext; the OS maps it lazily, so it costs no physical memory to speak of.
    return bytes(_CHUNK_BYTES)


def _fill_keystream(seed: bytes, domain: bytes, view: memoryview) -> None:
    """Write the first ``len(view)`` bytes of the stream into the writable byte view ``view``.

    ``update_into`` needs ``block_size - 1`` bytes of slack after what it writes, so the last 15 bytes
    come from ``update`` instead; CTR is a stream mode, so the split does not change the stream.
    """
    encryptor = Cipher(algorithms.AES(_derive_key(seed, domain)), modes.CTR(_CTR_INITIAL_BLOCK)).encryptor()
    zeros = memoryview(_zeros())
    nbytes = len(view)
    bulk = max(nbytes - (_AES_BLOCK_BYTES - 1), 0)
    pos = 0
    while pos < bulk:  # loops over 16 MiB chunks, not over elements
        take = min(_CHUNK_BYTES, bulk - pos)
        pos += encryptor.update_into(zeros[:take], view[pos:])
    if pos < nbytes:
        view[pos:] = encryptor.update(zeros[: nbytes - pos])
    encryptor.finalize()


def keystream_bytes(seed: bytes, nbytes: int, *, domain: bytes) -> bytes:
    """The first ``nbytes`` bytes of the PRG stream for ``(seed, domain)``.

    :func:`expand_mask` is this stream read as little-endian uint32 (b <= 32) or uint64 words, masked
    to b bits.

    Raises:
        TypeError: ``seed``/``domain`` not bytes or ``nbytes`` not an int.
        ParameterError: ``seed`` is not 32 bytes, or ``nbytes`` is negative.
    """
    _check_seed_and_domain(seed, domain)
    _check_count("nbytes", nbytes)
    if nbytes == 0:
        return b""
    out = bytearray(nbytes)
    _fill_keystream(seed, domain, memoryview(out))
    return bytes(out)


def mask_dtype(modulus_bits: int) -> np.dtype[np.uint32] | np.dtype[np.uint64]:
    """The element type of masks (and masked vectors) in Z_{2^modulus_bits}."""
    _check_modulus_bits(modulus_bits)
    return np.dtype(np.uint32) if modulus_bits <= 32 else np.dtype(np.uint64)


def _check_modulus_bits(modulus_bits: int) -> None:
    if not isinstance(modulus_bits, int) or isinstance(modulus_bits, bool):
        raise TypeError(f"modulus_bits must be an int, not {type(modulus_bits).__name__}")
    if not 1 <= modulus_bits <= MAX_MODULUS_BITS:
        raise ParameterError(f"modulus_bits must be in 1..{MAX_MODULUS_BITS}, got {modulus_bits}")


def expand_mask(
    seed: bytes,
    length: int,
    modulus_bits: int,
    *,
    domain: bytes,
    out: npt.NDArray[np.uint32] | npt.NDArray[np.uint64] | None = None,
) -> npt.NDArray[np.uint32] | npt.NDArray[np.uint64]:
    """Expand ``seed`` into ``length`` independent uniform elements of Z_{2^modulus_bits}.

    Args:
        seed: exactly 32 secret bytes (a pairwise agreed key or a self-mask seed).
        length: number of elements (>= 0).
        modulus_bits: b in 1..64; every value lies in [0, 2^b).
        domain: public context string (round, pair, purpose) separating independent masks.
        out: optional C-contiguous array of ``mask_dtype(modulus_bits)`` and shape ``(length,)`` to
            fill and return; reusing one scratch buffer across many masks avoids a fresh page-faulting
            allocation per mask (the keystream itself is then the whole cost).

    Returns:
        A fresh, writable, C-contiguous array of shape ``(length,)``: ``uint32`` for b <= 32, else
        ``uint64`` (see :func:`mask_dtype`).

    Raises:
        TypeError: wrongly typed arguments.
        ParameterError: ``seed`` is not 32 bytes, ``length`` < 0, or ``modulus_bits`` outside 1..64.
    """
    _check_seed_and_domain(seed, domain)
    _check_count("length", length)
    dtype = mask_dtype(modulus_bits)
    if out is None:
        words = np.empty(length, dtype=dtype)
    else:
        if not isinstance(out, np.ndarray) or out.dtype != dtype or out.shape != (length,):
            raise ParameterError(f"out must be a {dtype} array of shape ({length},)")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ParameterError("out must be C-contiguous and writable")
        words = out
    if length == 0:
        return words
    _fill_keystream(seed, domain, memoryview(words.view(np.uint8)))  # type: ignore[arg-type]  # numpy stubs
    if sys.byteorder == "big":  # the stream is read as little-endian words on every platform
        words.byteswap(inplace=True)
    if modulus_bits < 8 * dtype.itemsize:
        np.bitwise_and(words, dtype.type((1 << modulus_bits) - 1), out=words)
    return words


class KeystreamUniforms:
    """Uniform floats in [0, 1) (53 random bits each) from this module's AES-CTR stream.

    A cryptographically secure stand-in for ``numpy.random.Generator.random`` where randomness touches
    private values (the stochastic rounding of an encoded update): with ``seed=None`` the seed comes from
    :mod:`secrets`; a fixed 32-byte seed makes a simulation reproducible. The stream is read sequentially.
    """

    _DOMAIN: Final = b"/uniforms/v1"

    def __init__(self, seed: bytes | None = None) -> None:
        import secrets

        self._seed = secrets.token_bytes(SEED_BYTES) if seed is None else seed
        _check_seed_and_domain(self._seed, self._DOMAIN)
        self._encryptor = Cipher(
            algorithms.AES(_derive_key(self._seed, self._DOMAIN)), modes.CTR(_CTR_INITIAL_BLOCK)
        ).encryptor()

    def __repr__(self) -> str:
        return "KeystreamUniforms(<seed hidden>)"

    def random(self, size: int, dtype: type = np.float64) -> npt.NDArray[np.float64]:
        """``size`` uniforms in [0, 1), like ``Generator.random`` (float64 only)."""
        _check_count("size", size)
        if dtype is not np.float64:
            raise ParameterError("KeystreamUniforms only produces float64")
        words = np.frombuffer(self._encryptor.update(bytes(8 * size)), dtype="<u8").astype(np.uint64)
        return (words >> np.uint64(11)).astype(np.float64) * 2.0**-53
