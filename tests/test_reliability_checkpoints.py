"""Item 9 of issue 16: a model.nf mismatch is named first, not buried under the shapes it changes."""

import jax.numpy as jnp
import pytest

from score_jax import checkpoints


def _state(width: int):
  params = {f"layer_{i}": {"kernel": jnp.zeros((width, width))} for i in range(12)}
  return dict(params=params, ema_params=params, opt_state={}, step=jnp.int32(1))


def test_the_config_field_comes_before_the_parameter_shapes(tmp_path):
  with checkpoints.Checkpointer(tmp_path, _state(8), snapshot_freq=1, preemption_freq=None,
                                config_sections={"model": {"nf": 8}}) as ckpts:
    ckpts.save(_state(8), 1)
  with checkpoints.Checkpointer(tmp_path, _state(16), snapshot_freq=1, preemption_freq=None,
                                config_sections={"model": {"nf": 16}}) as other:
    with pytest.raises(ValueError, match=r"first mismatches: \['model.nf: 8 in the checkpoint, 16 now', "
                                         r"\"params/layer_0/kernel.*\(\+8 more\)"):
      other.restore_latest()
