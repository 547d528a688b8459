from __future__ import annotations

import base64
import copy
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from secagg import keys
from secagg.errors import CryptoError, EncodingError, ParameterError
from secagg.keys import KeyPair, SigningKey, agree, open_sealed, seal, verify

VECTORS: dict[str, Any] = json.loads((Path(__file__).parent / "vectors" / "keys.json").read_text())
RFC = VECTORS["x25519"]
KEY = bytes(range(32))
CTX: dict[str, Any] = {"sender": 3, "receiver": 7, "round_id": 42, "purpose": b"shares"}

# Small-order (and non-canonical small-order) X25519 u-coordinates: the shared secret is all zero.
P25519 = 2**255 - 19
SMALL_ORDER = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P25519 - 1,
    P25519,
    P25519 + 1,
]


def hidden_forms(secret: bytes) -> list[str]:
    return [
        secret.hex(),
        secret.hex().upper(),
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode().rstrip("="),
        repr(secret),
    ]


# ------------------------------------------------------------------------------------------------
# X25519


def test_rfc7748_key_pairs_and_shared_secret() -> None:
    alice = KeyPair.from_private_bytes(bytes.fromhex(RFC["alice_private"]))
    bob = KeyPair.from_private_bytes(bytes.fromhex(RFC["bob_private"]))
    assert alice.public_bytes().hex() == RFC["alice_public"]
    assert bob.public_bytes().hex() == RFC["bob_public"]
    assert alice.private_bytes().hex() == RFC["alice_private"]
    # agree() is HKDF over exactly the RFC 7748 shared secret.
    shared = bytes.fromhex(RFC["shared"])
    for info in (b"", b"pairwise"):
        expected = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"fedshield/secagg/v1/" + info
        ).derive(shared)
        assert agree(alice, bob.public_bytes(), info=info) == expected
        assert agree(bob, alice.public_bytes(), info=info) == expected


@pytest.mark.parametrize("case", VECTORS["agree"], ids=lambda c: c["info"] or "empty")
def test_agree_known_answers(case: dict[str, str]) -> None:
    alice = KeyPair.from_private_bytes(bytes.fromhex(RFC["alice_private"]))
    got = alice.agree(bytes.fromhex(RFC["bob_public"]), info=bytes.fromhex(case["info"]))
    assert got.hex() == case["key"]


def test_both_sides_agree_and_info_separates() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    k1 = agree(a, b.public_bytes(), info=b"prg/round=1")
    assert k1 == agree(b, a.public_bytes(), info=b"prg/round=1")
    assert len(k1) == 32
    assert k1 != agree(a, b.public_bytes(), info=b"prg/round=2")
    assert k1 != agree(a, b.public_bytes(), info=b"seal/round=1")
    assert k1 != agree(a, KeyPair.generate().public_bytes(), info=b"prg/round=1")
    assert a.public_bytes() != b.public_bytes()


@pytest.mark.parametrize("u", SMALL_ORDER, ids=range(len(SMALL_ORDER)))
def test_small_order_points_are_refused(u: int) -> None:
    peer = (u % 2**256).to_bytes(32, "little")
    with pytest.raises(CryptoError, match="all-zero"):
        agree(KeyPair.generate(), peer, info=b"x")


def test_agree_argument_validation() -> None:
    me = KeyPair.generate()
    for bad in (b"", bytes(31), bytes(33)):
        with pytest.raises(EncodingError):
            agree(me, bad, info=b"x")
    with pytest.raises(TypeError):
        agree(me, me.public_bytes().hex(), info=b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        agree(me, me.public_bytes(), info="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        agree(X25519PrivateKey.generate(), me.public_bytes(), info=b"x")  # type: ignore[arg-type]
    with pytest.raises(ParameterError):
        KeyPair.from_private_bytes(bytes(31))


def test_keypair_repr_and_pickling_hide_the_private_key() -> None:
    pair = KeyPair.generate()
    private = pair.private_bytes()
    for text in (repr(pair), str(pair), f"{pair}", repr([pair])):
        assert "hidden" in text
        assert all(form not in text for form in hidden_forms(private))
    assert pair.public_bytes()[:4].hex() in repr(pair)
    with pytest.raises(TypeError):
        pickle.dumps(pair)
    with pytest.raises(TypeError):
        copy.deepcopy(pair)


def test_reconstructed_private_key_gives_the_same_agreement() -> None:
    # SecAgg dropout recovery: the server rebuilds u's key from shares and recomputes u's pairwise seed.
    u, v = KeyPair.generate(), KeyPair.generate()
    rebuilt = KeyPair.from_private_bytes(u.private_bytes())
    assert rebuilt.public_bytes() == u.public_bytes()
    assert agree(rebuilt, v.public_bytes(), info=b"m") == agree(v, u.public_bytes(), info=b"m")


# ------------------------------------------------------------------------------------------------
# seal / open_sealed


@pytest.mark.parametrize("case", VECTORS["seal"], ids=lambda c: f"s{c['sender']}-r{c['receiver']}")
def test_seal_known_answers(case: dict[str, Any]) -> None:
    key, nonce = bytes.fromhex(case["key"]), bytes.fromhex(case["nonce"])
    plaintext, purpose = bytes.fromhex(case["plaintext"]), bytes.fromhex(case["purpose"])
    ctx = {
        "sender": case["sender"],
        "receiver": case["receiver"],
        "round_id": case["round_id"],
        "purpose": purpose,
    }
    sealed = keys._seal_with_nonce(
        key, nonce, plaintext, ctx["sender"], ctx["receiver"], ctx["round_id"], purpose
    )
    assert sealed.hex() == case["sealed"]
    # Independent construction of the documented associated data.
    ad = (
        b"fedshield/secagg/v1/seal"
        + struct.pack(">QQQI", ctx["sender"], ctx["receiver"], ctx["round_id"], len(purpose))
        + purpose
    )
    assert nonce + AESGCM(key).encrypt(nonce, plaintext, ad) == sealed
    assert open_sealed(key, sealed, **ctx) == plaintext


@given(st.binary(max_size=300), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=20))
def test_round_trip(plaintext: bytes, sender: int, round_id: int, purpose: bytes) -> None:
    ctx = {"sender": sender, "receiver": 1, "round_id": round_id, "purpose": purpose}
    sealed = seal(KEY, plaintext, **ctx)
    assert len(sealed) == len(plaintext) + keys.SEAL_OVERHEAD
    assert open_sealed(KEY, sealed, **ctx) == plaintext


def test_nonces_are_fresh() -> None:
    a, b = seal(KEY, b"share", **CTX), seal(KEY, b"share", **CTX)
    assert a[:12] != b[:12] and a != b


def expect_auth_failure(key: bytes, sealed: bytes, **ctx: Any) -> None:
    with pytest.raises(CryptoError) as info:
        open_sealed(key, sealed, **ctx)
    assert str(info.value) == "share ciphertext failed authentication"
    # No chained InvalidTag etc. in tracebacks: one opaque failure.
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__ or info.value.__context__ is None


def test_tampering_is_rejected() -> None:
    sealed = seal(KEY, b"a secret share value", **CTX)
    for position in (0, 5, 11, 12, 20, len(sealed) - 17, len(sealed) - 1):  # nonce, ciphertext, tag
        flipped = bytearray(sealed)
        flipped[position] ^= 0x01
        expect_auth_failure(KEY, bytes(flipped), **CTX)
    expect_auth_failure(KEY, sealed[:-1], **CTX)
    expect_auth_failure(KEY, sealed + b"\x00", **CTX)
    expect_auth_failure(KEY, sealed[:27], **CTX)  # shorter than nonce + tag
    expect_auth_failure(KEY, b"", **CTX)
    expect_auth_failure(bytes(32), sealed, **CTX)


@pytest.mark.parametrize(
    "change",
    [
        {"sender": 4},  # attributed to another sender
        {"receiver": 8},  # misaddressed
        {"receiver": 3, "sender": 7},  # reflected back
        {"round_id": 43},  # replayed into a later round
        {"round_id": 41},
        {"purpose": b"share"},
        {"purpose": b"shares\x00"},
        {"purpose": b""},
    ],
)
def test_wrong_context_is_rejected(change: dict[str, Any]) -> None:
    sealed = seal(KEY, b"share", **CTX)
    expect_auth_failure(KEY, sealed, **(CTX | change))


def test_associated_data_is_injective() -> None:
    # Length-prefixing the purpose: moving bytes between fields can never produce the same AD.
    ad = keys._associated_data
    assert ad(1, 2, 3, b"") != ad(1, 2, 3, b"\x00")
    assert ad(1, 2, 3 << 8, b"") != ad(1, 2, 3, b"\x00")
    assert ad(1, 2, 3, b"ab") != ad(2, 1, 3, b"ab")


def test_seal_argument_validation() -> None:
    for bad_key in (b"", bytes(16), bytes(31), bytes(33)):
        with pytest.raises(ParameterError):
            seal(bad_key, b"x", **CTX)
        with pytest.raises(ParameterError):
            open_sealed(bad_key, bytes(40), **CTX)
    for field, value in (("sender", -1), ("receiver", 2**64), ("round_id", -5)):
        with pytest.raises(ParameterError):
            seal(KEY, b"x", **(CTX | {field: value}))
    with pytest.raises(TypeError):
        seal(KEY, b"x", **(CTX | {"sender": True}))
    with pytest.raises(TypeError):
        seal(KEY, "x", **CTX)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        seal(KEY, b"x", **(CTX | {"purpose": "shares"}))


def test_key_errors_do_not_echo_the_key() -> None:
    key = bytes(range(100, 131))  # 31 bytes
    with pytest.raises(ParameterError) as info:
        seal(key, b"x", **CTX)
    assert all(form not in str(info.value) for form in hidden_forms(key))


# ------------------------------------------------------------------------------------------------
# Ed25519


def test_sign_and_verify() -> None:
    signer = SigningKey.generate()
    signature = signer.sign(b"public keys of round 1")
    assert len(signature) == keys.SIGNATURE_BYTES
    verify(signer.public_bytes(), b"public keys of round 1", signature)
    rebuilt = SigningKey.from_private_bytes(signer.private_bytes())
    assert rebuilt.public_bytes() == signer.public_bytes()


def test_rfc8032_test_vector_1() -> None:
    signer = SigningKey.from_private_bytes(
        bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    )
    assert signer.public_bytes().hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert signer.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46b"
        "d25bf5f0595bbe24655141438e7a100b"
    )


def test_bad_signatures_are_rejected_uniformly() -> None:
    signer = SigningKey.generate()
    message = b"m"
    signature = signer.sign(message)
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    cases = [
        (signer.public_bytes(), b"other", signature),
        (signer.public_bytes(), message, flipped),
        (signer.public_bytes(), message, signature[:-1]),
        (signer.public_bytes(), message, b""),
        (SigningKey.generate().public_bytes(), message, signature),
        (signer.public_bytes()[:31], message, signature),
        (b"\xff" * 32, message, signature),
    ]
    for public, msg, sig in cases:
        with pytest.raises(CryptoError, match="^signature verification failed$"):
            verify(public, msg, sig)
    with pytest.raises(TypeError):
        verify(signer.public_bytes(), "m", signature)  # type: ignore[arg-type]


def test_signing_key_repr_hides_the_seed() -> None:
    signer = SigningKey.generate()
    seed = signer.private_bytes()
    assert all(form not in repr(signer) for form in hidden_forms(seed))
    assert "hidden" in repr(signer)
    with pytest.raises(TypeError):
        pickle.dumps(signer)


def test_x25519_public_key_roundtrip_through_cryptography() -> None:
    # public_bytes() is the raw RFC 7748 encoding cryptography itself accepts.
    pair = KeyPair.generate()
    X25519PublicKey.from_public_bytes(pair.public_bytes())
