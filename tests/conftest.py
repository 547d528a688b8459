from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

# Ray (ours and Flower's simulation engine) warns about a future default unless this is set; keep its behaviour.
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")

# Tiny models: one intra-op thread is faster, and pytest-xdist already runs one worker per core.
torch.set_num_threads(1)

# CI must be reproducible: derandomised examples, no wall-clock deadline on 2 shared cores.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
