"""Data-parallel training (score_jax.parallel) on two CPU devices.

Run through ``tests/test_parallel.py``, which starts pytest on this folder in a fresh interpreter with
``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (the flag must be set before JAX starts); in the main
test process, with one device, these tests skip. jit over a mesh, pmap and one device train on the same global
batch with the real train step and must end with the same parameters.
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import builders, configs_loader, models, parallel, train

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(jax.device_count() != 2, reason="needs 2 devices; tests/test_parallel.py runs "
                                "this file with XLA_FLAGS=--xla_force_host_platform_device_count=2")


class TinyNet(nn.Module):  # with dropout: its masks must not depend on the device layout either
  @nn.compact
  def __call__(self, x, labels, train=False):
    emb = models.timestep_embedding(jnp.asarray(labels, jnp.float32), 16)
    h = nn.silu(nn.Dense(32)(x) + nn.Dense(32)(emb))
    return nn.Dense(x.shape[-1])(nn.Dropout(0.2, deterministic=not train)(h))


@pytest.fixture(scope="module")
def setting():
  config = configs_loader.load_config(ROOT / "configs" / "toy" / "gmm2d.py")
  config.model.features = (16, 16)
  config.training.batch_size = 8
  config.optim.update(lr=1e-2, warmup=0)
  sde, optimizer = builders.build_sde(config), builders.build_optimizer(config)
  xs = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 2))  # 3 steps of the global batch [n, B, D]
  return dict(config=config, sde=sde, optimizer=optimizer, xs=xs, key=jax.random.PRNGKey(5))


def _rel(a, b) -> float:
  a, b = (jnp.concatenate([leaf.ravel() for leaf in jax.tree_util.tree_leaves(t)]) for t in (a, b))
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))


def _model(name, config):
  return builders.build_model(config) if name == "score_mlp" else TinyNet()


@pytest.mark.parametrize("name", ["score_mlp", "tiny_dropout"])
def test_jit_pmap_and_one_device_train_alike(setting, name):
  config, sde, optimizer, xs, key = (setting[k] for k in ("config", "sde", "optimizer", "xs", "key"))
  model = _model(name, config)
  state = train.init_train_state(jax.random.PRNGKey(0), config, model, optimizer, (1, 2))
  single_fn = train.make_fused_train_step(train.make_train_step(config, model, sde, optimizer))
  single, m_single = jax.jit(single_fn)(state, xs, key)

  mesh = parallel.make_mesh()
  jstep = parallel.make_parallel_train_step(config, train.make_train_step(config, model, sde, optimizer), "jit",
                                            mesh=mesh, donate=False)
  sharded, m_jit = jstep(parallel.replicate(state, "jit", mesh), xs, key)
  assert len(sharded.params["Dense_0"]["kernel"].sharding.device_set) == 2

  pmap_fn = train.make_train_step(config, model, sde, optimizer, axis_name=parallel.AXIS_NAME)
  pstep = parallel.make_parallel_train_step(config, pmap_fn, "pmap", donate=False)
  pmapped, m_pmap = pstep(parallel.replicate(state, "pmap"), xs, key)
  pmapped = parallel.unreplicate(pmapped, "pmap")

  assert [int(single.step), int(sharded.step), int(pmapped.step)] == [3, 3, 3]
  assert _rel(state.params, single.params) > 1e-3  # the parameters did train
  assert _rel(single.params, sharded.params) <= 1e-6
  assert _rel(single.params, pmapped.params) <= 1e-6
  assert _rel(single.ema_params, pmapped.ema_params) <= 1e-6
  assert float(np.max(np.abs(m_jit["loss"] - m_single["loss"]))) <= 1e-5
  assert float(np.max(np.abs(m_pmap["loss"] - m_single["loss"]))) <= 1e-5


def test_a_stop_request_is_agreed_on_one_host():
  assert parallel.agree_on_stop(True) is True and parallel.agree_on_stop(False) is False


def _bad_calls(setting):
  config, sde, optimizer, xs, key = (setting[k] for k in ("config", "sde", "optimizer", "xs", "key"))
  odd = config.copy_and_resolve_references()
  odd.training.batch_size = 7
  step_fn = train.make_train_step(config, TinyNet(), sde, optimizer)
  state = train.init_train_state(jax.random.PRNGKey(0), config, TinyNet(), optimizer, (1, 2))
  return {
      "config": lambda: parallel.make_parallel_train_step(odd, step_fn, "jit"),
      "batch": lambda: parallel.make_parallel_train_step(config, step_fn, "jit")(state, xs[:, :3], key),
      "pmap_batch": lambda: parallel.shard_batch(np.zeros((1, 5, 2)), "pmap"),
      "axis": lambda: parallel.make_parallel_train_step(config, step_fn, "pmap"),
      "mode": lambda: parallel.make_parallel_train_step(config, step_fn, "shard_map"),
  }


@pytest.mark.parametrize("case,expected", [
    ("config", ("training.batch_size 7", "number of devices 2")),
    ("batch", ("batch size 3", "number of devices 2")),
    ("pmap_batch", ("batch size 5", "number of devices 2")),
    ("axis", ("axis_name='batch'",)),
    ("mode", ("shard_map",)),
])
def test_bad_batches_and_modes_fail_with_the_reason(setting, case, expected):
  with pytest.raises(ValueError) as info:
    _bad_calls(setting)[case]()
  for text in expected:
    assert text in str(info.value)
