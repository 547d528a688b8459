"""Key agreement, share encryption and signatures: thin, misuse-resistant wrappers over pyca/cryptography.

* :class:`KeyPair` -- X25519. :meth:`KeyPair.agree` runs X25519 and HKDF-SHA256 with
  ``info = b"fedshield/secagg/v1/" + info`` (salt None, i.e. HashLen zero bytes per RFC 5869), giving
  32-byte keys: one ``info`` per use (pairwise mask seed, share-encryption key, ...) keeps them
  independent. An all-zero shared secret (peer sent a small-order point) is refused, because it would
  give a key the attacker knows.
* :func:`seal` / :func:`open_sealed` -- AES-256-GCM with a fresh random 96-bit nonce prefixed to the
  ciphertext, and associated data binding protocol version, sender, receiver, round and purpose. A
  share ciphertext replayed into another round, re-addressed to another receiver, attributed to another
  sender or reused for another purpose fails authentication. Every failure raises the same
  :class:`~secagg.errors.CryptoError` message, so a caller cannot be used as a decryption oracle.
* :class:`SigningKey` / :func:`verify` -- Ed25519 (the SecAgg malicious-server variant signs keys).

Key-holding objects hide their secret bytes in ``repr`` and expose them only through explicitly named
methods (SecAgg needs the raw X25519 private key to secret-share it for dropout recovery).
"""

from __future__ import annotations

import hmac
import os
import struct
from typing import Final, NoReturn

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from secagg.errors import CryptoError, EncodingError, ParameterError

__all__ = [
    "KDF_INFO_PREFIX",
    "KEY_BYTES",
    "NONCE_BYTES",
    "PUBLIC_KEY_BYTES",
    "SEAL_AD_PREFIX",
    "SEAL_OVERHEAD",
    "SIGNATURE_BYTES",
    "KeyPair",
    "SigningKey",
    "agree",
    "open_sealed",
    "seal",
    "verify",
]

#: HKDF ``info`` prefix of every derived key.
KDF_INFO_PREFIX: Final = b"fedshield/secagg/v1/"
#: Associated-data prefix of every sealed message (protocol and construction version).
SEAL_AD_PREFIX: Final = b"fedshield/secagg/v1/seal"
#: Symmetric keys (derived and sealing) are 32 bytes: AES-256.
KEY_BYTES: Final = 32
#: X25519 and Ed25519 public keys are 32 bytes.
PUBLIC_KEY_BYTES: Final = 32
#: AES-GCM nonce: 96 random bits. Collision risk stays negligible for far more than 2^32 messages per
#: key, and each derived key only ever seals a handful of shares.
NONCE_BYTES: Final = 12
_TAG_BYTES: Final = 16
#: A sealed message is this many bytes longer than its plaintext.
SEAL_OVERHEAD: Final = NONCE_BYTES + _TAG_BYTES
SIGNATURE_BYTES: Final = 64

_AUTH_FAILED: Final = "share ciphertext failed authentication"
_MAX_U64: Final = (1 << 64) - 1


def _check_bytes(name: str, value: object, length: int | None = None) -> bytes:
    # Messages name the argument and its length only, never its content.
    if not isinstance(value, bytes):
        raise TypeError(f"{name} must be bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise ParameterError(f"{name} must be {length} bytes, got {len(value)}")
    return value


def _hide(public: bytes) -> str:
    # A short public-key fingerprint is enough to tell objects apart in logs; the public key is public.
    return public[:4].hex() + "..."


# --------------------------------------------------------------------------------------------------
# X25519 key agreement


class KeyPair:
    """An X25519 key pair. ``repr`` shows a public-key fingerprint only."""

    __slots__ = ("_private", "_public")

    def __init__(self, private_key: X25519PrivateKey) -> None:
        if not isinstance(private_key, X25519PrivateKey):
            raise TypeError(f"expected an X25519PrivateKey, got {type(private_key).__name__}")
        self._private = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh key pair from the operating system's CSPRNG (via cryptography/OpenSSL)."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyPair:
        """Rebuild a key pair from its 32 raw private bytes (e.g. after Shamir reconstruction)."""
        return cls(X25519PrivateKey.from_private_bytes(_check_bytes("private key", data, KEY_BYTES)))

    def public_bytes(self) -> bytes:
        """The 32-byte raw public key (RFC 7748 u-coordinate)."""
        return self._public

    def private_bytes(self) -> bytes:
        """The 32 raw private bytes. SECRET: only for secret-sharing the key; never log or send in clear."""
        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def agree(self, peer_public_bytes: bytes, *, info: bytes) -> bytes:
        """Shorthand for :func:`agree` with this key pair."""
        return agree(self, peer_public_bytes, info=info)

    def __repr__(self) -> str:
        return f"KeyPair(public={_hide(self._public)}, private=<hidden>)"

    def __reduce__(self) -> NoReturn:
        # Pickling would write the private key to wherever the pickle goes; make that an explicit act.
        raise TypeError("KeyPair cannot be pickled; use private_bytes() deliberately if you must persist it")


def agree(my_private: KeyPair, peer_public_bytes: bytes, *, info: bytes) -> bytes:
    """A 32-byte key shared with the owner of ``peer_public_bytes``.

    ``HKDF-SHA256(ikm=X25519(my, peer), salt=None, info=b"fedshield/secagg/v1/" + info, length=32)``;
    both sides obtain the same key, and different ``info`` values give independent keys.

    Raises:
        EncodingError: ``peer_public_bytes`` is not 32 bytes.
        CryptoError: the shared secret is all zero (peer key of small order): refused, not weakened.
    """
    if not isinstance(my_private, KeyPair):
        raise TypeError(f"my_private must be a KeyPair, got {type(my_private).__name__}")
    _check_bytes("peer public key", peer_public_bytes)
    if len(peer_public_bytes) != PUBLIC_KEY_BYTES:
        # Wire data, not a caller bug: an encoding problem.
        raise EncodingError(f"peer public key must be {PUBLIC_KEY_BYTES} bytes, got {len(peer_public_bytes)}")
    peer = X25519PublicKey.from_public_bytes(peer_public_bytes)
    info = _check_bytes("info", info)
    try:
        shared = my_private._private.exchange(peer)
    except ValueError:
        # OpenSSL itself rejects the all-zero output of a small-order point; report it uniformly.
        raise CryptoError("key agreement produced an all-zero shared secret (small-order peer key)") from None
    if hmac.compare_digest(shared, bytes(len(shared))):  # belt and braces if the backend does not check
        raise CryptoError("key agreement produced an all-zero shared secret (small-order peer key)")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=KDF_INFO_PREFIX + info).derive(
        shared
    )


# --------------------------------------------------------------------------------------------------
# Authenticated encryption of shares


def _associated_data(sender: int, receiver: int, round_id: int, purpose: bytes) -> bytes:
    for name, value in (("sender", sender), ("receiver", receiver), ("round_id", round_id)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if not 0 <= value <= _MAX_U64:
            raise ParameterError(f"{name} must be in 0..2^64-1, got {value}")
    purpose = _check_bytes("purpose", purpose)
    # Fixed-width integers and a length-prefixed purpose make the encoding injective: no two different
    # (sender, receiver, round, purpose) tuples share associated data.
    return SEAL_AD_PREFIX + struct.pack(">QQQI", sender, receiver, round_id, len(purpose)) + purpose


def _seal_with_nonce(
    key: bytes, nonce: bytes, plaintext: bytes, sender: int, receiver: int, round_id: int, purpose: bytes
) -> bytes:
    """:func:`seal` with an explicit nonce -- only for known-answer tests; never reuse a nonce."""
    ad = _associated_data(sender, receiver, round_id, purpose)
    return nonce + AESGCM(_check_bytes("key", key, KEY_BYTES)).encrypt(nonce, plaintext, ad)


def seal(key: bytes, plaintext: bytes, *, sender: int, receiver: int, round_id: int, purpose: bytes) -> bytes:
    """Encrypt and authenticate ``plaintext`` for ``receiver``: ``nonce (12) || ciphertext || tag (16)``.

    Raises:
        ParameterError: key not 32 bytes or an id/round outside 0..2^64-1.
        TypeError: wrongly typed arguments.
    """
    _check_bytes("plaintext", plaintext)
    return _seal_with_nonce(key, os.urandom(NONCE_BYTES), plaintext, sender, receiver, round_id, purpose)


def open_sealed(
    key: bytes, sealed: bytes, *, sender: int, receiver: int, round_id: int, purpose: bytes
) -> bytes:
    """Decrypt a :func:`seal` output, checking it was sealed for exactly this context.

    Raises:
        CryptoError: ``"share ciphertext failed authentication"`` for *any* bad ciphertext -- truncated,
            tampered, wrong key, or sealed for another sender/receiver/round/purpose.
        ParameterError / TypeError: the caller's own arguments (key length, ids) are invalid.
    """
    key = _check_bytes("key", key, KEY_BYTES)
    sealed = _check_bytes("sealed", sealed)
    ad = _associated_data(sender, receiver, round_id, purpose)
    if len(sealed) < SEAL_OVERHEAD:
        raise CryptoError(_AUTH_FAILED)
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], ad)
    except InvalidTag:
        raise CryptoError(_AUTH_FAILED) from None


# --------------------------------------------------------------------------------------------------
# Ed25519 signatures


class SigningKey:
    """An Ed25519 signing key. ``repr`` shows a public-key fingerprint only."""

    __slots__ = ("_private", "_public")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        if not isinstance(private_key, Ed25519PrivateKey):
            raise TypeError(f"expected an Ed25519PrivateKey, got {type(private_key).__name__}")
        self._private = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> SigningKey:
        """Rebuild a signing key from its 32-byte RFC 8032 seed."""
        return cls(Ed25519PrivateKey.from_private_bytes(_check_bytes("signing key", data, KEY_BYTES)))

    def public_bytes(self) -> bytes:
        """The 32-byte verification key."""
        return self._public

    def private_bytes(self) -> bytes:
        """The 32-byte seed. SECRET: for deliberate persistence only."""
        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature of ``message``."""
        return self._private.sign(_check_bytes("message", message))

    def __repr__(self) -> str:
        return f"SigningKey(public={_hide(self._public)}, private=<hidden>)"

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "SigningKey cannot be pickled; use private_bytes() deliberately if you must persist it"
        )


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature; return None if valid.

    Raises:
        CryptoError: ``"signature verification failed"`` for a bad signature, wrong-length signature or
            an invalid public key (one message for all, as for :func:`open_sealed`).
        TypeError: arguments not bytes.
    """
    _check_bytes("public_key", public_key)
    _check_bytes("message", message)
    _check_bytes("signature", signature)
    try:
        if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
            raise InvalidSignature
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise CryptoError("signature verification failed") from None
