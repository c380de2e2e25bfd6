"""Rematerialisation (gradient checkpointing) of the networks' blocks: memory traded for compute.

A network with ``remat`` other than ``'none'`` wraps each of its residual and attention blocks (NCSN++ /
DDPM++ / DDPM) or residual and RefineNet blocks (NCSNv2 / NCSN) in ``flax.linen.remat``: the backward pass
recomputes what the block's forward pass would have kept, so that only the block's inputs (and, with a
policy, some of its intermediates) stay alive between the forward and the backward pass. Forward values,
variable trees and gradients are unchanged (tests/test_memory.py).

Policies (``model.remat``):

- ``'none'``: no rematerialisation.
- ``'block'``: nothing inside a block is saved; its whole forward pass is recomputed in the backward pass
  (``jax.checkpoint``'s default policy). Least memory; about one extra forward pass of compute.
- ``'block_save_convs'``: a block keeps the outputs of its convolutions and dense layers
  (``jax.checkpoint_policies.dots_saveable``) and recomputes the rest (normalisations, activations,
  resampling, dropout): no extra convolution FLOPs, less memory saved.

docs/benchmarks.md (*Memory*) gives the measured memory and FLOPs of each.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

__all__ = ["REMAT_POLICIES", "check_remat", "remat_block"]

# model.remat -> the jax.checkpoint policy of each block (None: save nothing, jax's default).
_POLICIES = {"block": None, "block_save_convs": jax.checkpoint_policies.dots_saveable}
REMAT_POLICIES = ("none",) + tuple(_POLICIES)


def check_remat(remat: str) -> None:
  """ValueError unless ``remat`` is one of :data:`REMAT_POLICIES`."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"Unknown remat {remat!r} (model.remat); expected one of {list(REMAT_POLICIES)}.")


@functools.lru_cache(maxsize=None)
def remat_block(cls: type[nn.Module], remat: str, static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
  """``cls`` rematerialised with the policy ``remat``, under the same class name (``cls`` itself for 'none').

  Flax names the lifted class ``Checkpoint<cls>``, and a submodule's automatic name (hence its parameter
  path, ``ResnetBlockBigGANpp_3/...``) comes from its class name; keeping ``cls``'s name keeps the paths.

  Args:
    cls: a block class.
    remat: one of :data:`REMAT_POLICIES`.
    static_argnums: positions of Python arguments of ``__call__`` (``self`` is 0), e.g. the ``train`` flag.
  """
  check_remat(remat)
  if remat == "none":
    return cls
  wrapped = nn.remat(cls, policy=_POLICIES[remat], static_argnums=static_argnums)
  wrapped.__name__, wrapped.__qualname__ = cls.__name__, cls.__qualname__
  return wrapped
