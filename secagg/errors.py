"""The exception hierarchy of :mod:`secagg`.

Modelled on h11 and pyca/cryptography: wrong types raise ``TypeError`` subclasses, wrong lengths and
values ``ValueError`` subclasses. No exception message ever contains a key, seed, mask or share.
"""

from __future__ import annotations


class SecAggError(Exception):
    """Base of every error raised by :mod:`secagg`."""


class ParameterError(SecAggError, ValueError):
    """A parameter (threshold, bit width, field size, range) is invalid or unsafe."""


class EncodingError(SecAggError, ValueError):
    """A value cannot be encoded or decoded (range exceeded, malformed bytes)."""


class CryptoError(SecAggError):
    """Authentication or decryption failed. Deliberately carries no detail (no oracle)."""


class ReconstructionError(SecAggError):
    """A secret could not be reconstructed (too few or inconsistent shares)."""


class ProtocolError(SecAggError):
    """A protocol session cannot go on. After any ProtocolError the session is pinned in ``ERROR``."""


class LocalProtocolError(ProtocolError):
    """This side was asked to do something illegal in its current state (caller misuse)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something illegal: wrong phase, round, address, duplicate, forged or malformed."""


class AbortError(ProtocolError):
    """The round cannot complete (fewer than t parties left) and was aborted; no sum is revealed."""
