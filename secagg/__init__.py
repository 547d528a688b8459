"""Secure aggregation: pairwise-mask SecAgg/SecAgg+ and CKKS aggregation.

numpy/cryptography/tenseal only (no torch, no :mod:`fl`), so other FL stacks can embed it.
"""

from __future__ import annotations

from secagg.errors import CryptoError, EncodingError, ParameterError, ReconstructionError, SecAggError

__all__ = ["CryptoError", "EncodingError", "ParameterError", "ReconstructionError", "SecAggError"]
