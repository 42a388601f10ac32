"""Saving and loading: atomic exports, parameter files, JSON and logs, checkpoints.

Every model the course ships (VAE, DiT, classifiers) is a directory written here."""

from __future__ import annotations

import jax
from flax import nnx


def count_params(model: nnx.Module) -> int:
    """The number of trainable parameters (`nnx.Param` leaves) of `model`."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
