"""Memory features of training: gradient accumulation (score_jax.train), rematerialisation in the networks
(score_jax.nets.remat), the n_jitted_steps fusion's memory and the bench_memory.py script.

Gradient accumulation must give the full batch's update (each example keeps its global index, so its draws
do not depend on the split), alone and data-parallel on two simulated CPU devices (in a subprocess, as
tests/test_parallel.py). Rematerialisation must leave the variable trees, the outputs and the gradients of
every network family unchanged.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import builders, configs_loader, models, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIM = 4  # flat data [B, DIM]


class TinyNet(nn.Module):
  """``(x [B, D], labels [B]) -> [B, D]`` with dropout, whose masks follow each example's key."""

  @nn.compact
  def __call__(self, x, labels, train: bool = False):
    emb = models.timestep_embedding(jnp.asarray(labels, jnp.float32), 16)
    h = nn.silu(nn.Dense(32)(x) + nn.Dense(32)(emb))
    return nn.Dense(x.shape[-1])(nn.Dropout(0.2, deterministic=not train)(h))


def _toy_config(batch_size=8, n_jitted=3, accum=1):
  config = configs_loader.load_config(ROOT / "configs/toy/gmm2d.py")
  config.model.features = (16, 16)
  config.training.batch_size = batch_size
  config.training.n_jitted_steps = n_jitted
  config.training.grad_accum_steps = accum
  config.optim.update(lr=1e-2, warmup=0)
  return config


def _flat(tree):
  return jnp.concatenate([leaf.ravel() for leaf in jax.tree_util.tree_leaves(tree)])


def _rel(a, b):
  a, b = _flat(a), _flat(b)
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))


def _train(config, model, xs, key):
  sde, optimizer = builders.build_sde(config), builders.build_optimizer(config)
  state = train.init_train_state(jax.random.PRNGKey(0), config, model, optimizer, (1, DIM))
  steps = train.make_fused_train_step(train.make_train_step(config, model, sde, optimizer))
  return state, jax.jit(steps)(state, xs, key)


@pytest.mark.parametrize("accum", [4])
def test_grad_accumulation_equals_the_full_batch_step(accum):
  xs = jax.random.normal(jax.random.PRNGKey(1), (3, 8, DIM))  # 3 steps of batch 8
  key = jax.random.PRNGKey(5)
  for model in (TinyNet(), None):
    config = _toy_config()
    model = builders.build_model(config) if model is None else model
    state, (full, m_full) = _train(config, model, xs, key)
    _, (accumulated, m_acc) = _train(_toy_config(accum=accum), model, xs, key)
    assert int(accumulated.step) == 3
    assert _rel(state.params, full.params) > 1e-3  # the steps moved the parameters
    assert _rel(full.params, accumulated.params) < 1e-6
    assert _rel(full.ema_params, accumulated.ema_params) < 1e-6
    assert _rel(full.opt_state[-1][0].mu, accumulated.opt_state[-1][0].mu) < 1e-6  # one Adam step per batch
    np.testing.assert_allclose(m_acc["loss"], m_full["loss"], rtol=1e-6)
    np.testing.assert_allclose(m_acc["grad_norm"], m_full["grad_norm"], rtol=1e-5)


def test_grad_accumulation_rejects_a_batch_that_does_not_split():
  config = _toy_config(batch_size=6, accum=4)
  with pytest.raises(ValueError, match="grad_accum_steps=4"):
    _train(config, TinyNet(), jnp.zeros((1, 6, DIM)), jax.random.PRNGKey(0))
  config.training.grad_accum_steps = 0
  with pytest.raises(ValueError, match="grad_accum_steps=0"):
    train.grad_accum_steps(config)


_TWO_DEVICES = textwrap.dedent('''
    import json, pathlib, sys
    import jax, jax.numpy as jnp
    jax.config.update("jax_numpy_rank_promotion", "raise")
    sys.path.insert(0, "tests")
    from score_jax import builders, parallel, train
    from test_memory import DIM, TinyNet, _rel, _toy_config

    assert jax.device_count() == 2, jax.devices()
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 8, DIM))
    key = jax.random.PRNGKey(5)
    out = {}
    model = TinyNet()
    config = _toy_config()
    sde, optimizer = builders.build_sde(config), builders.build_optimizer(config)
    state = train.init_train_state(jax.random.PRNGKey(0), config, model, optimizer, (1, DIM))
    single = jax.jit(train.make_fused_train_step(train.make_train_step(config, model, sde, optimizer)))
    full, _ = single(state, xs, key)
    config = _toy_config(accum=2)  # 2 devices x 2 micro-batches of 2 rows
    mesh = parallel.make_mesh()
    jstep = parallel.make_parallel_train_step(config, train.make_train_step(config, model, sde, optimizer), "jit",
                                              mesh=mesh, donate=False)
    sharded, _ = jstep(parallel.replicate(state, "jit", mesh), xs, key)
    pmap_fn = train.make_train_step(config, model, sde, optimizer, axis_name=parallel.AXIS_NAME)
    pstep = parallel.make_parallel_train_step(config, pmap_fn, "pmap", donate=False)
    pmapped, _ = pstep(parallel.replicate(state, "pmap"), xs, key)
    pmapped = parallel.unreplicate(pmapped, "pmap")
    out = dict(jit=_rel(full.params, sharded.params), pmap=_rel(full.params, pmapped.params),
               ema=_rel(full.ema_params, sharded.ema_params), step=int(sharded.step))
    try:
      parallel.make_parallel_train_step(_toy_config(accum=8), jstep, "jit")
    except ValueError as e:
      out["error"] = str(e)
    print(json.dumps(out))
''')


def test_grad_accumulation_on_two_devices_equals_one_device_full_batch():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
             PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-c", _TWO_DEVICES], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["step"] == 3
  assert out["jit"] < 1e-6 and out["pmap"] < 1e-6 and out["ema"] < 1e-6, out
  assert "grad_accum_steps=8" in out["error"], out
