"""One helper seeds everything."""

from __future__ import annotations

import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    import torch  # local import: config and CLI start-up stay torch-free

    torch.manual_seed(seed)
