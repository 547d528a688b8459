"""Tests for benchmarks/flower_ref.py (the Flower SecAgg+ reference used by the SecAgg benchmarks).

The Flower tests skip unless ``flwr`` is installed (extra ``[bench]``; CI installs only ``[dev]``).
The PRG-floor test and the lazy-import test always run: the module must not import flwr at load time.
"""

from __future__ import annotations

import importlib.util
import math
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

MODULE_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "flower_ref.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fedshield_bench_flower_ref", MODULE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ref() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def flower(ref: ModuleType) -> ModuleType:
    pytest.importorskip("flwr")
    return ref


# --- no flwr needed --------------------------------------------------------------------------------


def test_prg_floor_positive_without_flwr(ref: ModuleType) -> None:
    assert ref.prg_floor_seconds(1 << 20) > 0
    assert ref.prg_floor_seconds(1000, chunk_bytes=64) > 0  # ragged tail
    assert ref.prg_floor_seconds(0) >= 0


def test_module_does_not_import_flwr_at_load() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('m', {str(MODULE_PATH)!r})\n"
        "mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n"
        "assert not any(k == 'flwr' or k.startswith('flwr.') for k in sys.modules), 'flwr imported'\n"
        "assert isinstance(mod.flower_available(), bool)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- Flower present --------------------------------------------------------------------------------


def test_flower_secaggplus_small_with_dropout(flower: ModuleType) -> None:
    assert flower.flower_available()
    assert flower.flower_version()
    n, m, k, t = 6, 50, 4, 3
    r = flower.run_flower_secaggplus(n, m, k, t, 1 / 6, seed=0)
    assert r["correct"] == 1.0
    assert r["max_abs_err"] <= r["tolerance"]
    for key in ("client_s", "client_mask_s", "server_s"):
        assert r[key] > 0, key
    assert r["client_mask_s"] < r["client_s"]
    assert r["bytes_per_client"] > m * 4
    assert r["n_dropped"] == 1.0 and r["n_timed_clients"] == 5.0
    assert r["k_effective"] == 4.0
    assert (r["n"], r["m"], r["k"], r["t"]) == (n, m, k, t)


def test_flower_secaggplus_all_neighbours_no_dropout(flower: ModuleType) -> None:
    r = flower.run_flower_secaggplus(5, 20, 4, 3, 0.0, seed=1)  # k = n - 1: plain SecAgg topology
    assert r["correct"] == 1.0
    assert r["n_dropped"] == 0.0 and r["num_shares"] == 5.0 and r["k_effective"] == 4.0


def test_flower_global_rng_state_restored(flower: ModuleType) -> None:
    # Flower draws from the legacy global NumPy RNG; the helper must leave it (and `random`) untouched.
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    expected = (random.random(), np.random.random())  # noqa: NPY002
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    flower.run_flower_secaggplus(4, 10, 3, 2, 0.0, seed=7)
    assert (random.random(), np.random.random()) == expected  # noqa: NPY002


def test_flower_mask_sample_mode(flower: ModuleType) -> None:
    r = flower.run_flower_secaggplus(8, 40, 4, 3, 0.125, seed=2, mask_sample=2)
    assert math.isnan(r["correct"])
    assert r["n_timed_clients"] == 2.0
    assert r["server_s"] > 0 and r["bytes_per_client"] > 40 * 4


def test_flower_rejects_bad_arguments(flower: ModuleType) -> None:
    with pytest.raises(ValueError):
        flower.run_flower_secaggplus(6, 10, 4, 5, 0.0)  # t > k
    with pytest.raises(ValueError):
        flower.run_flower_secaggplus(6, 10, 1, 1, 0.0)  # k < 2
    with pytest.raises(ValueError):
        flower.run_flower_secaggplus(6, 10, 4, 3, 1.0)
