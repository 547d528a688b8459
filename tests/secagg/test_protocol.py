"""End-to-end properties of the SecAgg / SecAgg+ sessions, driven in memory."""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from secagg.errors import AbortError, LocalProtocolError, ParameterError, ProtocolError, RemoteProtocolError
from secagg.graph import NeighbourGraph
from secagg.messages import (
    EncryptedShares,
    ForwardedShares,
    KeyDirectory,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from secagg.protocol import ClientSession, ClientState, ProtocolConfig, ServerPhase, ServerSession
from secagg.simulate import PHASES, identity_keys_for, run_round


def _inputs(config: ProtocolConfig, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    high = 1 << config.modulus_bits
    return {
        u: rng.integers(0, high, config.vector_length, dtype=np.uint64).astype(config.dtype)
        for u in config.client_ids
    }


def _expected(config: ProtocolConfig, inputs: dict[int, np.ndarray], survivors: tuple[int, ...]) -> np.ndarray:
    acc = np.zeros(config.vector_length, dtype=object)
    for u in survivors:
        acc += inputs[u].astype(object)
    return (acc % (1 << config.modulus_bits)).astype(np.uint64)


def _config(n: int, t: int | None = None, *, m: int = 16, bits: int = 32, degree: int | None = None,
            identity: dict[int, bytes] | None = None, round_id: int = 7) -> ProtocolConfig:
    graph = NeighbourGraph.complete(n) if degree is None else NeighbourGraph.harary(n, degree, bytes(32))
    holders = graph.degree + 1
    return ProtocolConfig(round_id, graph, t if t is not None else holders // 2 + 1, m, bits, identity)


@st.composite
def _scenarios(draw: st.DrawFn) -> tuple[ProtocolConfig, dict[int, str]]:
    n = draw(st.integers(2, 60))
    sparse = n >= 8 and draw(st.booleans())
    degree = draw(st.sampled_from([d for d in range(4, n - 1, 2)])) if sparse and n > 5 else None
    holders = (degree if degree is not None else n - 1) + 1
    t = draw(st.integers(holders // 2 + 1, holders))
    bits = draw(st.sampled_from([8, 20, 32, 40, 64]))
    m = draw(st.integers(1, 40))
    config = ProtocolConfig(draw(st.integers(0, 2**64 - 1)), NeighbourGraph.complete(n) if degree is None
                            else NeighbourGraph.harary(n, degree, draw(st.binary(min_size=32, max_size=32))),
                            t, m, bits)
    drops = draw(st.dictionaries(st.integers(1, n), st.sampled_from(["advertise", "share", "mask", "unmask"]),
                                 max_size=n))
    return config, drops


def _sends(config: ProtocolConfig, drops: dict[int, str], phase: str) -> set[int]:
    """Clients that still send their message of ``phase`` under the drop schedule."""
    return {u for u in config.client_ids if u not in drops or PHASES.index(drops[u]) > PHASES.index(phase)}


def _survives(config: ProtocolConfig, drops: dict[int, str]) -> bool | None:
    """Whether the round must complete (True) or must abort (False); None where it depends on the graph."""
    if config.graph.degree != config.num_clients - 1:
        return None
    return all(len(_sends(config, drops, p)) >= config.threshold for p in ("advertise", "share", "mask", "unmask"))


@settings(max_examples=40, deadline=None)
@given(_scenarios())
def test_sum_of_survivors_or_clean_abort(scenario: tuple[ProtocolConfig, dict[int, str]]) -> None:
    config, drops = scenario
    inputs = _inputs(config, seed=config.vector_length)
    must = _survives(config, drops)
    try:
        result, _ = run_round(config, inputs, drops=drops)  # type: ignore[arg-type]
    except AbortError:
        assert must is not True, "round aborted although every phase kept >= t clients"
        return
    assert must is not False, "round completed with fewer than t clients in some phase"
    # a client that dropped in 'unmask' still sent its masked input: it is a survivor
    survivors = tuple(sorted(_sends(config, drops, "mask")))
    assert set(result.survivors) <= set(survivors)
    np.testing.assert_array_equal(result.vector.astype(np.uint64), _expected(config, inputs, result.survivors))
    if must:
        assert result.survivors == survivors
        assert set(result.dropped) == {u for u, p in drops.items() if p == "mask"}


@pytest.mark.parametrize("phase", PHASES)
def test_drop_in_every_phase_with_plenty_left(phase: str) -> None:
    config = _config(10, 6, m=50)
    inputs = _inputs(config, 1)
    drops = {3: phase, 8: phase}
    if phase == "consistency":
        private, public = identity_keys_for(10)
        config = _config(10, 6, m=50, identity=public)
        result, _ = run_round(config, inputs, drops=drops, identities=private)  # type: ignore[arg-type]
    else:
        result, _ = run_round(config, inputs, drops=drops)  # type: ignore[arg-type]
    gone_before_input = {"advertise", "share", "mask"}
    expected_survivors = tuple(u for u in range(1, 11) if not (u in drops and phase in gone_before_input))
    assert result.survivors == expected_survivors
    np.testing.assert_array_equal(result.vector.astype(np.uint64), _expected(config, inputs, expected_survivors))


def test_too_few_survivors_abort_without_revealing() -> None:
    config = _config(6, 4)
    with pytest.raises(AbortError, match="need at least 4"):
        run_round(config, _inputs(config), drops={1: "mask", 2: "mask", 3: "share"})
    # unmask phase: enough masked inputs, too few responders. Drive by hand to inspect the server after.
    server = ServerSession(config)
    clients = {u: ClientSession(config, u) for u in config.client_ids}
    inputs = _inputs(config)
    for u, c in clients.items():
        c.set_input(inputs[u])
        server.receive(c.start())
    while server.phase is not ServerPhase.COLLECT_UNMASK:
        for msg in server.close_phase():
            if isinstance(msg, UnmaskRequest) and msg.receiver <= 3:
                continue  # clients 1-3 vanish before unmasking
            for reply in clients[msg.receiver].receive(msg):
                server.receive(reply)
    with pytest.raises(AbortError, match="only 3 clients answered"):
        server.close_phase()
    assert server.phase is ServerPhase.ERROR and server.result is None
    with pytest.raises(ProtocolError, match="error"):
        server.close_phase()


def test_active_variant_with_consistency_round() -> None:
    private, public = identity_keys_for(8)
    config = _config(8, 5, identity=public, m=30)
    inputs = _inputs(config, 2)
    result, _ = run_round(config, inputs, drops={2: "mask"}, identities=private)
    assert 2 in result.dropped
    np.testing.assert_array_equal(result.vector.astype(np.uint64), _expected(config, inputs, result.survivors))


def test_forged_advertisement_is_excluded() -> None:
    private, public = identity_keys_for(5)
    config = _config(5, 3, identity=public)
    server = ServerSession(config)
    clients = {u: ClientSession(config, u, identity_key=private[u]) for u in config.client_ids}
    forged = ClientSession(config, 2, identity_key=private[3])  # signs with someone else's identity
    server.receive(clients[1].start())
    with pytest.raises(RemoteProtocolError, match="client 2"):
        server.receive(forged.start())
    assert 2 in server.excluded


# ---- adversarial server: what an honest client refuses -------------------------------------------------
def _drive_to_unmask(n: int = 5, t: int = 3) -> tuple[ProtocolConfig, dict[int, ClientSession], list[UnmaskRequest]]:
    config = _config(n, t)
    server = ServerSession(config)
    clients = {u: ClientSession(config, u) for u in config.client_ids}
    inputs = _inputs(config)
    for u, c in clients.items():
        c.set_input(inputs[u])
        server.receive(c.start())
    while True:
        outbox = server.close_phase()
        if server.phase is ServerPhase.COLLECT_UNMASK:  # deliver the unmask requests in the test instead
            return config, clients, [m for m in outbox if isinstance(m, UnmaskRequest)]
        for msg in outbox:
            for reply in clients[msg.receiver].receive(msg):
                server.receive(reply)


def _honest_request(config: ProtocolConfig, u: int) -> UnmaskRequest:
    return UnmaskRequest(config.round_id, u, tuple(config.client_ids), ())


def test_client_refuses_to_reveal_both_secrets_of_one_client() -> None:
    config, clients, _ = _drive_to_unmask()
    c = clients[1]
    bad = UnmaskRequest(config.round_id, 1, (1, 2, 3, 4, 5), (2,))
    with pytest.raises(RemoteProtocolError, match="both survivor and dropped"):
        c.receive(bad)
    assert c.state is ClientState.ERROR
    with pytest.raises(ProtocolError, match="ERROR state"):
        c.receive(_honest_request(config, 1))


@pytest.mark.parametrize(
    ("survivors", "dropped", "match"),
    [
        ((2, 3, 4, 5), (1,), "omits this client"),
        ((1, 2, 3), (4,), "does not account"),
        ((1, 2, 3, 4, 5), (), None),
    ],
)
def test_client_checks_unmask_requests(survivors: tuple[int, ...], dropped: tuple[int, ...], match: str | None) -> None:
    config, clients, _ = _drive_to_unmask()
    request = UnmaskRequest(config.round_id, 1, survivors, dropped)
    if match is None:
        (response,) = clients[1].receive(request)
        assert isinstance(response, UnmaskResponse) and len(response.self_mask_shares) == 5
        assert clients[1].state is ClientState.DONE
    else:
        with pytest.raises(RemoteProtocolError, match=match):
            clients[1].receive(request)


def test_client_rejects_wrong_round_address_and_phase() -> None:
    config = _config(4, 3)
    c = ClientSession(config, 1)
    with pytest.raises(RemoteProtocolError, match="unexpected KeyDirectory in state idle"):
        c.receive(KeyDirectory(config.round_id, 1, ()))
    c = ClientSession(config, 1)
    c.start()
    with pytest.raises(RemoteProtocolError, match="another round"):
        c.receive(KeyDirectory(config.round_id + 1, 1, ()))
    c = ClientSession(config, 1)
    c.start()
    with pytest.raises(RemoteProtocolError, match="another client"):
        c.receive(KeyDirectory(config.round_id, 2, ()))
    c = ClientSession(config, 1)
    with pytest.raises(LocalProtocolError):
        c.start()
        c.start()


def test_tampered_replayed_and_misaddressed_share_ciphertexts_are_rejected() -> None:
    config = _config(4, 3)
    server = ServerSession(config)
    clients = {u: ClientSession(config, u) for u in config.client_ids}
    for _u, c in clients.items():
        c.set_input(np.zeros(config.vector_length, config.dtype))
        server.receive(c.start())
    shares: dict[int, EncryptedShares] = {}
    for msg in server.close_phase():
        (reply,) = clients[msg.receiver].receive(msg)
        assert isinstance(reply, EncryptedShares)
        shares[msg.receiver] = reply
        server.receive(reply)
    forwarded = {m.receiver: m for m in server.close_phase() if isinstance(m, ForwardedShares)}
    honest = forwarded[1]
    sender, ct = honest.ciphertexts[0]
    tampered = ct[:-1] + bytes([ct[-1] ^ 1])
    misaddressed = dict(shares[2].ciphertexts)[3]
    c1 = clients[1]
    with pytest.raises(RemoteProtocolError, match="authentication"):
        c1.receive(ForwardedShares(config.round_id, 1, ((sender, tampered), *honest.ciphertexts[1:])))
    assert c1.state is ClientState.ERROR
    # misaddressed: the ciphertext 2 -> 3 delivered to client 4 as if 2 had sent it to 4
    c4 = clients[4]
    with pytest.raises(RemoteProtocolError, match="authentication"):
        c4.receive(ForwardedShares(config.round_id, 4, ((2, misaddressed), *[p for p in forwarded[4].ciphertexts if p[0] != 2])))


def test_server_rejects_duplicates_and_strangers() -> None:
    config = _config(4, 3)
    server = ServerSession(config)
    c = ClientSession(config, 1)
    advert = c.start()
    server.receive(advert)
    with pytest.raises(RemoteProtocolError, match="second AdvertiseKeys; ignored"):
        server.receive(advert)
    assert 1 not in server.excluded and server.received == (1,)  # a retransmission cannot abort the round
    with pytest.raises(RemoteProtocolError, match="unexpected MaskedInput"):
        server.receive(MaskedInput(config.round_id, 2, np.zeros(16, np.uint32)))


def test_masked_input_looks_uniform() -> None:
    # all-zero inputs: what the server sees of one client is its masks alone; bytes must look uniform
    config = _config(5, 3, m=20_000, bits=32)
    server = ServerSession(config)
    clients = {u: ClientSession(config, u) for u in config.client_ids}
    for _u, c in clients.items():
        c.set_input(np.zeros(config.vector_length, config.dtype))
        server.receive(c.start())
    masked = None
    for _ in range(2):
        for msg in server.close_phase():
            for reply in clients[msg.receiver].receive(msg):
                if isinstance(reply, MaskedInput) and reply.sender == 1:
                    masked = reply.vector
                server.receive(reply)
    assert masked is not None
    counts = np.bincount(np.frombuffer(masked.tobytes(), dtype=np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 0.001


def test_no_secret_in_reprs_or_errors() -> None:
    config = _config(4, 3)
    c = ClientSession(config, 1)
    c.start()
    secret_bytes = [c._secrets.enc.private_bytes(), c._secrets.mask.private_bytes()]  # noqa: SLF001
    texts = [repr(c), repr(c._secrets), str(config)]  # noqa: SLF001
    try:
        c.receive(KeyDirectory(config.round_id, 1, ()))
    except ProtocolError as exc:
        texts.append(str(exc))
    for s in secret_bytes:
        for text in texts:
            assert s.hex() not in text and str(list(s)) not in text


def test_config_validation() -> None:
    g = NeighbourGraph.complete(6)
    with pytest.raises(ParameterError, match="threshold must be in"):
        ProtocolConfig(1, g, 3, 10, 32)  # 3 of 6 holders is not a majority
    with pytest.raises(ParameterError, match="modulus_bits"):
        ProtocolConfig(1, g, 4, 10, 65)
    with pytest.raises(ParameterError, match="vector_length"):
        ProtocolConfig(1, g, 4, 0, 32)
    with pytest.raises(ParameterError, match="identity_keys lacks"):
        ProtocolConfig(1, g, 4, 10, 32, {1: secrets.token_bytes(32)})
    with pytest.raises(ParameterError, match="client_id"):
        ClientSession(ProtocolConfig(1, g, 4, 10, 32), 7)


def test_bad_share_is_identified_and_excluded() -> None:
    from secagg.shamir import share_from_bytes, share_to_bytes

    config = _config(7, 4)
    server = ServerSession(config)
    clients = {u: ClientSession(config, u) for u in config.client_ids}
    inputs = _inputs(config, 5)
    for u, c in clients.items():
        c.set_input(inputs[u])
        server.receive(c.start())
    while server.phase is not ServerPhase.DONE:
        for msg in server.close_phase():
            for reply in clients[msg.receiver].receive(msg):
                if isinstance(reply, UnmaskResponse) and reply.sender == 3:
                    owner, data = reply.self_mask_shares[0]
                    sid, value = share_from_bytes(data)
                    forged = share_to_bytes(sid, (value + 1) % (2**521 - 1))
                    reply = UnmaskResponse(reply.round_id, 3, ((owner, forged), *reply.self_mask_shares[1:]),
                                           reply.mask_key_shares)
                server.receive(reply)
    assert server.result is not None
    assert server.result.bad_shares == (3,)
    np.testing.assert_array_equal(server.result.vector.astype(np.uint64),
                                  _expected(config, inputs, server.result.survivors))


def test_replayed_ciphertext_under_another_sender_is_rejected() -> None:
    config = _config(4, 3)
    server = ServerSession(config)
    clients = {u: ClientSession(config, u) for u in config.client_ids}
    for c in clients.values():
        c.set_input(np.zeros(config.vector_length, config.dtype))
        server.receive(c.start())
    for msg in server.close_phase():
        for reply in clients[msg.receiver].receive(msg):
            server.receive(reply)
    forwarded = {m.receiver: m for m in server.close_phase() if isinstance(m, ForwardedShares)}
    cts = dict(forwarded[1].ciphertexts)
    replayed = ((2, cts[2]), (3, cts[2]), (4, cts[4]))  # 2's ciphertext replayed as if 3 sent it
    with pytest.raises(RemoteProtocolError, match="authentication"):
        clients[1].receive(ForwardedShares(config.round_id, 1, replayed))


def test_no_secret_reaches_reprs_or_error_texts_during_a_round() -> None:
    config = _config(5, 3, m=8)
    server = ServerSession(config)
    clients = {u: ClientSession(config, u) for u in config.client_ids}
    for _u, c in clients.items():
        c.set_input(np.zeros(config.vector_length, config.dtype))
        server.receive(c.start())
    texts: list[str] = []
    messages = []
    while server.phase is not ServerPhase.DONE:
        outbox = server.close_phase()
        messages.extend(outbox)
        for msg in outbox:
            for reply in clients[msg.receiver].receive(msg):
                messages.append(reply)
                server.receive(reply)
                try:  # every rejection path the server has for a duplicate or stray message
                    server.receive(reply)
                except ProtocolError as exc:
                    texts.append(str(exc))
        texts.append(repr(server))
    texts += [repr(m) for m in messages] + [repr(c) for c in clients.values()] + [repr(server.result)]
    secrets_hex: list[str] = []
    for c in clients.values():
        secrets_hex += [c._secrets.enc.private_bytes().hex(), c._secrets.mask.private_bytes().hex()]  # noqa: SLF001
    for m in messages:
        if isinstance(m, UnmaskResponse):
            secrets_hex += [data.hex() for _, data in (*m.self_mask_shares, *m.mask_key_shares)]
    assert secrets_hex and texts
    for text in texts:
        for h in secrets_hex:
            assert h[:16] not in text


def test_sessions_saved_and_restored_between_every_exchange_give_the_exact_sum() -> None:
    # A host that handles each message in a fresh process (a Flower ClientApp) keeps only these bytes.
    config = _config(6, 4)
    server = ServerSession(config)
    inputs = _inputs(config)
    saved: dict[int, bytes] = {}
    for u in config.client_ids:
        session = ClientSession(config, u)
        server.receive(session.start())
        saved[u] = session.to_bytes()
    while server.phase is not ServerPhase.DONE:
        for msg in server.close_phase():
            session = ClientSession.from_bytes(saved[msg.receiver], config)
            if session.state is ClientState.WAIT_SHARES:
                session.set_input(inputs[msg.receiver])
            for reply in session.receive(msg):
                server.receive(reply)
            if session.state is not ClientState.DONE:
                saved[msg.receiver] = session.to_bytes()
    assert server.result is not None
    np.testing.assert_array_equal(server.result.vector, _expected(config, inputs, tuple(config.client_ids)))
    assert "FSFS" not in repr(ClientSession.from_bytes(saved[1], config))


def test_saved_sessions_are_checked_before_use() -> None:
    config = _config(5, 3)
    session = ClientSession(config, 5)
    session.start()
    data = session.to_bytes()
    for bad, match in [(data[:-1], "truncated"), (data + b"\0", "trailing"), (b"XXXX" + data[4:], "format"),
                       (bytearray(data), "must be bytes")]:
        with pytest.raises(LocalProtocolError, match=match):
            ClientSession.from_bytes(bad, config)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="does not belong to this round"):
        ClientSession.from_bytes(data, _config(5, 3, round_id=8))
    with pytest.raises(LocalProtocolError, match="outside this round"):
        ClientSession.from_bytes(data, _config(4, 3))
    idle = ClientSession(config, 3)
    with pytest.raises(LocalProtocolError, match="cannot persist"):
        idle.to_bytes()
