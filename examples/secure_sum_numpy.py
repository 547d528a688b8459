"""Embed fedshield's secure aggregation in your own loop with plain numpy (no torch, no fl).

    .venv/bin/python examples/secure_sum_numpy.py [--clients 20] [--length 10000]

Part 1 uses the one-call API. Part 2 drives the sans-IO sessions message by message through the wire
codec, the way a network transport or another FL framework would.
"""

from __future__ import annotations

import argparse

import numpy as np

from secagg import (
    ClientSession,
    ForwardedShares,
    ServerPhase,
    ServerSession,
    decode,
    encode,
    plan_round,
    secure_sum,
)
from secagg.quantize import FixedPointCodec


def one_call(num_clients: int, length: int) -> float:
    rng = np.random.default_rng(0)
    updates = {client: rng.normal(0, 0.1, length) for client in range(num_clients)}
    result = secure_sum(updates, clip=1.0, mode="secagg+", late_dropouts=[999])  # client 999 vanished
    error = float(np.abs(result.sum - np.sum(list(updates.values()), axis=0)).max())
    print(f"one call: {result.description}")
    print(f"  survivors {len(result.survivors)}, recovered dropouts {result.dropped}, max abs error {error:.2e}")
    return error


def sans_io(num_clients: int, length: int) -> float:
    rng = np.random.default_rng(1)
    codec = FixedPointCodec.with_safe_modulus(clip=1.0, scale_bits=20, num_clients=num_clients)
    config, _ = plan_round(num_clients, length, codec.modulus_bits, round_id=42)
    floats = {u: rng.uniform(-1, 1, length) for u in config.client_ids}
    clients = {u: ClientSession(config, u) for u in config.client_ids}
    server = ServerSession(config)
    for u, client in clients.items():
        client.set_input(codec.encode(floats[u], rng=rng).astype(config.dtype))
        server.receive(decode(encode(client.start())))  # every hop goes through bytes
    vanished = 2  # this client stops answering after sharing its keys: its masks must be recovered
    while server.phase is not ServerPhase.DONE:
        for message in server.close_phase():  # the caller decides when a phase's window closes
            if message.receiver == vanished and isinstance(message, ForwardedShares):
                continue
            for reply in clients[message.receiver].receive(decode(encode(message))):
                server.receive(decode(encode(reply)))
    assert server.result is not None
    total = codec.decode_sum(server.result.vector.astype(np.uint64), len(server.result.survivors))
    exact = sum(floats[u] for u in server.result.survivors)
    error = float(np.abs(total - exact).max())
    print(f"sans-IO: survivors {server.result.survivors}, dropped {server.result.dropped}, max abs error {error:.2e}")
    return error


def main(argv: list[str] | None = None) -> tuple[float, float]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--length", type=int, default=10_000)
    args = ap.parse_args(argv)
    return one_call(args.clients, args.length), sans_io(min(args.clients, 8), args.length)


if __name__ == "__main__":
    main()
