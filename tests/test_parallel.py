"""Data-parallel training (score_jax.parallel) on two CPU devices, in a subprocess.

``XLA_FLAGS=--xla_force_host_platform_device_count=2`` must be set before JAX starts, so the checks run in a
fresh interpreter. jit over a mesh, pmap and one device train on the same global batch with the real train
step and must end with the same parameters.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

_SCRIPT = textwrap.dedent('''
    import json, pathlib
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_numpy_rank_promotion", "raise")
    from score_jax import builders, configs_loader, models, parallel, train

    assert jax.device_count() == 2, jax.devices()
    out = {}

    class TinyNet(nn.Module):  # with dropout: its masks must not depend on the device layout either
      @nn.compact
      def __call__(self, x, labels, train=False):
        emb = models.timestep_embedding(jnp.asarray(labels, jnp.float32), 16)
        h = nn.silu(nn.Dense(32)(x) + nn.Dense(32)(emb))
        return nn.Dense(x.shape[-1])(nn.Dropout(0.2, deterministic=not train)(h))

    config = configs_loader.load_config(pathlib.Path("configs/toy/gmm2d.py"))
    config.model.features = (16, 16)
    config.training.batch_size = 8
    config.optim.update(lr=1e-2, warmup=0)
    sde, optimizer = builders.build_sde(config), builders.build_optimizer(config)
    xs = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 2))  # 3 steps of the global batch [n, B, D]
    key = jax.random.PRNGKey(5)

    def rel(a, b):
      a, b = (jnp.concatenate([l.ravel() for l in jax.tree_util.tree_leaves(t)]) for t in (a, b))
      return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a))

    for name, model in [("score_mlp", builders.build_model(config)), ("tiny_dropout", TinyNet())]:
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

      out[name] = dict(
          steps=[int(single.step), int(sharded.step), int(pmapped.step)],
          moved=rel(state.params, single.params),
          jit_vs_single=rel(single.params, sharded.params), pmap_vs_single=rel(single.params, pmapped.params),
          ema_pmap_vs_single=rel(single.ema_params, pmapped.ema_params),
          loss_jit=float(np.max(np.abs(m_jit["loss"] - m_single["loss"]))),
          loss_pmap=float(np.max(np.abs(m_pmap["loss"] - m_single["loss"]))))

    odd = config.copy_and_resolve_references()
    odd.training.batch_size = 7
    errors = {}
    step_fn = train.make_train_step(config, TinyNet(), sde, optimizer)
    for label, fn in [
        ("config", lambda: parallel.make_parallel_train_step(odd, step_fn, "jit")),
        ("batch", lambda: parallel.make_parallel_train_step(config, step_fn, "jit")(state, xs[:, :3], key)),
        ("pmap_batch", lambda: parallel.shard_batch(np.zeros((1, 5, 2)), "pmap")),
        ("axis", lambda: parallel.make_parallel_train_step(config, step_fn, "pmap")),
        ("mode", lambda: parallel.make_parallel_train_step(config, step_fn, "shard_map"))]:
      try:
        fn()
        errors[label] = None
      except ValueError as e:
        errors[label] = str(e)
    out["errors"] = errors
    print("RESULT " + json.dumps(out))
''')


def _run_two_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
  return json.loads(line[len("RESULT "):])


def test_jit_pmap_and_one_device_train_alike_and_bad_batches_fail():
  result = _run_two_devices()
  for name in ("score_mlp", "tiny_dropout"):
    r = result[name]
    assert r["steps"] == [3, 3, 3], r
    assert r["moved"] > 1e-3, r  # the parameters did train
    assert r["jit_vs_single"] <= 1e-6, r
    assert r["pmap_vs_single"] <= 1e-6, r
    assert r["ema_pmap_vs_single"] <= 1e-6, r
    assert r["loss_jit"] <= 1e-5 and r["loss_pmap"] <= 1e-5, r
  errors = result["errors"]
  assert "training.batch_size 7" in errors["config"] and "number of devices 2" in errors["config"]
  assert "batch size 3" in errors["batch"] and "number of devices 2" in errors["batch"]
  assert "batch size 5" in errors["pmap_batch"] and "number of devices 2" in errors["pmap_batch"]
  assert "axis_name='batch'" in errors["axis"]
  assert "shard_map" in errors["mode"]
