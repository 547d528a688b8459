"""FedAvg of a torch model under CKKS homomorphic encryption, with ``secagg.ckks`` driven by hand (no fl.simulation).

    .venv/bin/python examples/ckks_torch_model.py [--clients 5] [--rounds 3] [--preset compact|add_only]

Three roles, each holding only what it must:

* the key holder creates the CKKS keys once and hands out one public blob (no secret key in it);
* each hospital trains the MLP on its share of breast cancer, flattens its update with
  :class:`fl.layout.ParamLayout`, clips it to the public range and encrypts ``[n_k * update, n_k]``;
* the server adds the ciphertexts; it holds no secret key and learns neither updates nor weights.

The key holder decrypts only the weighted mean, noise-flooded because it leaves the key holder, and the
server loads it into the model. Prints, per round, the test accuracy and the largest error of the decrypted
mean against the plaintext mean next to its documented bound, then the bytes on the wire.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from fl.client import TrainConfig, evaluate, local_train
from fl.data import federate, load_breast_cancer
from fl.layout import ParamLayout
from fl.models import build_model
from secagg import ckks

PRESETS = {"compact": ckks.COMPACT, "add_only": ckks.ADD_ONLY}


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=5, help="number of hospitals")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--preset", choices=tuple(PRESETS), default="compact")
    ap.add_argument("--max-abs", type=float, default=1.0, help="public per-coordinate clip of an update")
    ap.add_argument("--max-weight", type=float, default=500.0, help="public bound on a hospital's example count")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    data = federate(load_breast_cancer(), args.clients, partition="iid", seed=args.seed)
    model = build_model("mlp", data.feature_shape, data.num_classes, hidden=(16,), seed=args.seed)
    layout = ParamLayout.from_module(model)
    weights = layout.flatten(model)
    plain_weights = weights.copy()  # the same FedAvg without encryption, for comparison
    train = TrainConfig(epochs=2, batch_size=16, lr=0.1)
    x_test, y_test = data.pooled_test()

    # Key holder: keys once per training. Clients and server get only the public blob.
    config = ckks.AggregationConfig(PRESETS[args.preset], max_clients=args.clients, max_abs=args.max_abs,
                                    max_weight=args.max_weight)
    key_holder = ckks.KeyHolder.generate(config)
    public = key_holder.public_context_bytes()
    encryptors = [ckks.ClientEncryptor(public, client_id=c.client_id) for c in data.clients]
    assert not any(e.holds_secret_key for e in encryptors)

    worst_error = worst_bound = 0.0
    update_bytes = sum_bytes = chunks = 0
    accuracy = {"ckks": 0.0, "plain": 0.0}
    print(f"{args.clients} hospitals, MLP 30-16-2 ({layout.size} parameters), preset {args.preset}, "
          f"public blob {len(public) / 1e3:.0f} kB")
    print(f"{'round':>5} {'accuracy':>9} {'max |mean err|':>15} {'bound':>9} {'flood std':>10} {'clipped':>8}")
    for round_index in range(args.rounds):
        server = ckks.CiphertextAggregator(public, length=layout.size)  # a fresh sum per round
        assert not server.holds_secret_key  # the server cannot decrypt what it adds
        clipped_values, counts = [], []
        clipped = 0
        for client, encryptor in zip(data.clients, encryptors, strict=True):
            update = local_train(model, layout, weights, client.x_train, client.y_train, train, task=data.task,
                                 client_id=client.client_id, seed=1000 * round_index + client.client_id)
            # CKKS wraps silently outside its range: clip to the public bound before encrypting.
            delta = np.clip(update.delta.astype(np.float64), -args.max_abs, args.max_abs)
            clipped += int(np.count_nonzero(np.abs(update.delta) > args.max_abs))
            encrypted = encryptor.encrypt_update(delta, float(update.num_examples))
            update_bytes, chunks = encrypted.nbytes, encrypted.num_chunks
            server.add(encrypted)
            clipped_values.append(delta)
            counts.append(update.num_examples)
        total = server.result()
        sum_bytes = total.nbytes
        mean, total_weight = key_holder.decrypt_mean(total)  # flooded: this mean leaves the key holder

        n = np.asarray(counts, dtype=np.float64)
        plain_mean = n @ np.stack(clipped_values) / n.sum()
        error = float(np.max(np.abs(mean - plain_mean)))
        # Documented bound: the raw CKKS error B_sum plus the flooding noise, all m + 1 released coordinates
        # within tau flooding sigmas except with probability 2^-40 (see secagg/ckks.py), carried to the mean.
        sigma = key_holder.flooding_sigma(layout.size)
        tau = math.sqrt(2 * (math.log(2 * (layout.size + 1)) + 40 * math.log(2)))
        sum_bound = key_holder.sum_error_bound(len(counts), layout.size, total_weight=n.sum()) + tau * sigma
        bound = ckks.mean_error_bound(config, float(n.sum()), sum_bound)
        assert error <= bound and abs(total_weight - n.sum()) <= sum_bound
        worst_error, worst_bound = max(worst_error, error), max(worst_bound, bound)

        weights = (weights + mean).astype(np.float32)  # FedAvg, server learning rate 1
        plain_weights = (plain_weights + plain_mean).astype(np.float32)
        for name, w in (("plain", plain_weights), ("ckks", weights)):
            layout.load_into(model, w)
            accuracy[name] = evaluate(model, x_test, y_test, task=data.task)["accuracy"]
        print(f"{round_index:>5} {accuracy['ckks']:>9.4f} {error:>15.2e} {bound:>9.2e} "
              f"{sigma / n.sum():>10.2e} {clipped:>8}")

    layout.load_into(model, weights)  # the trained model now holds the CKKS-aggregated weights
    drift = float(np.max(np.abs(weights - plain_weights)))
    print(f"plaintext FedAvg accuracy {accuracy['plain']:.4f}, CKKS {accuracy['ckks']:.4f}; "
          f"max weight difference {drift:.2e}")
    print(f"bytes per client update {update_bytes} ({chunks} ciphertext of {PRESETS[args.preset].slot_count} slots "
          f"for {layout.size} values: {update_bytes / (4 * layout.size):.1f}x float32), encrypted sum {sum_bytes}, "
          f"public blob {len(public)}")
    return {
        "max_error": worst_error,
        "error_bound": worst_bound,
        "weight_drift": drift,
        "accuracy": accuracy["ckks"],
        "plain_accuracy": accuracy["plain"],
        "update_bytes": float(update_bytes),
        "sum_bytes": float(sum_bytes),
        "public_context_bytes": float(len(public)),
        "num_parameters": float(layout.size),
    }


if __name__ == "__main__":
    main()
