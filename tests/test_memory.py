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


@pytest.mark.slow  # a subprocess with two CPU devices, ~25 s; the one-device equality runs by default
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


# ---- rematerialisation ---------------------------------------------------------------------------------

def _assert_close(a, b, rtol=1e-6):
  """``b`` equal to ``a`` within ``rtol`` relative (norm of the difference over the norm of ``a``, the whole
  tree flattened), and each leaf within ``100 rtol`` of its own largest entry (or of the tree's, for leaves
  that are round-off only)."""
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  assert _rel(a, b) <= rtol
  top = max(float(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(a))
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    assert x.shape == y.shape
    scale = max(float(jnp.max(jnp.abs(x))), 1e-3 * top)
    assert float(jnp.max(jnp.abs(x - y))) <= 100 * rtol * scale


def _block_cases():
  from score_jax.nets import layers, layerspp, ncsn_layers, normalization

  swish = layers.get_act("swish")
  group_norm = normalization.get_normalization("GroupNorm")
  cond_norm = normalization.get_normalization("InstanceNorm++", conditional=True, num_classes=3)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 32))
  temb = jax.random.normal(jax.random.PRNGKey(1), (2, 16))
  y = jnp.array([0, 2])
  # (class, fields, call arguments, static_argnums): every block a network rematerialises
  return [
      (layerspp.ResnetBlockBigGANpp, dict(act=swish, down=True, out_ch=16, dropout=0.5, fir=True), (x, temb, True),
       (3,)),
      (layerspp.ResnetBlockDDPMpp, dict(act=swish, out_ch=16, dropout=0.5), (x, temb, True), (3,)),
      (layerspp.AttnBlockpp, dict(skip_rescale=True), (x,), ()),
      (layers.ResnetBlockDDPM, dict(act=swish, normalize=group_norm, out_ch=64, dropout=0.5), (x, temb, True), (3,)),
      (layers.AttnBlock, dict(normalize=group_norm), (x,), ()),
      (ncsn_layers.ResidualBlock, dict(output_dim=16, normalization=normalization.InstanceNorm2dPlus,
                                       resample="down", act=nn.elu, dilation=1), (x,), ()),
      (ncsn_layers.ConditionalResidualBlock, dict(output_dim=32, normalization=cond_norm, act=nn.elu, dilation=2),
       (x, y), ()),
      (ncsn_layers.RefineBlock, dict(output_shape=(4, 4), features=32, act=nn.elu), ([x, x[:, ::2, ::2]],), ()),
      (ncsn_layers.CondRefineBlock, dict(output_shape=(4, 4), features=32, normalizer=cond_norm, act=nn.elu,
                                         end=True), ([x, x[:, ::2, ::2]], y), ()),
  ]


# The default suite checks the cheapest blocks of each family with one policy; the slow marker runs all.
_FAST_BLOCKS = ("AttnBlockpp", "ResnetBlockDDPM", "ResidualBlock")


@pytest.mark.parametrize("remat, which", [
    ("block", "fast"),
    pytest.param("block", "all", marks=pytest.mark.slow),
    pytest.param("block_save_convs", "all", marks=pytest.mark.slow)])
def test_remat_blocks_keep_variables_outputs_and_gradients(remat, which):
  from score_jax.nets import remat as nets_remat

  for cls, fields, args, static in _block_cases():
    if which == "fast" and cls.__name__ not in _FAST_BLOCKS:
      continue
    plain, wrapped = cls(**fields), nets_remat.remat_block(cls, remat, static)(**fields)
    assert type(wrapped).__name__ == cls.__name__
    rngs = {"params": jax.random.PRNGKey(2), "dropout": jax.random.PRNGKey(3)}
    variables = plain.init(rngs, *args)
    _assert_close(variables, wrapped.init(rngs, *args), rtol=0)

    results = []
    for module in (plain, wrapped):
      def loss(params, module=module, variables=variables, args=args):
        out = module.apply({**variables, "params": params}, *args, rngs={"dropout": jax.random.PRNGKey(4)})
        return jnp.sum(out * jnp.cos(out)), out

      (_, out), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
      results.append((out, grads))
    _assert_close(results[0][0], results[1][0])  # dropout masks (train=True) included
    _assert_close(results[0][1], results[1][1])


# (config, overrides of a toy-size network): one per family
_NETWORKS = {
    "ncsnpp": ("configs/ve/cifar10_ncsnpp_continuous.py", {}),
    "ddpmpp": ("configs/vp/cifar10_ddpmpp_continuous.py", {}),
    "ddpm": ("configs/vp/ddpm/cifar10.py", {"model.nf": 32}),
    "ncsnv2": ("configs/ve/ncsnv2/cifar10.py", {}),
}


def _toy_network_config(name, remat):
  path, overrides = _NETWORKS[name]
  config = configs_loader.load_config(ROOT / path)
  config.data.image_size = 8
  config.model.update(nf=8, remat=remat)
  if "ch_mult" in config.model:
    config.model.update(ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
  for dotted, value in overrides.items():
    section, field = dotted.split(".")
    config[section][field] = value
  return config


def _init_shapes(config):
  model = builders.build_model(config)
  x = jnp.zeros((1, 8, 8, 3))
  return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.zeros((1,), jnp.int32)))


@pytest.mark.parametrize("name", sorted(_NETWORKS))
def test_remat_keeps_every_networks_variable_tree(name):
  reference = _init_shapes(_toy_network_config(name, "none"))
  for remat in ("block", "block_save_convs"):
    shapes = _init_shapes(_toy_network_config(name, remat))
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(reference)
    assert jax.tree_util.tree_map(lambda a: a.shape, shapes) == jax.tree_util.tree_map(lambda a: a.shape, reference)
  with pytest.raises(ValueError, match="model.remat"):
    builders.build_model(_toy_network_config(name, "everything"))


@pytest.mark.slow  # compiles each toy network twice: 0.5 to 3 minutes each on two loaded CPU cores
@pytest.mark.parametrize("name", sorted(_NETWORKS))
def test_remat_keeps_every_networks_loss_and_gradients(name):
  """The training loss (dropout on, per-example masks) and its gradients with and without remat."""
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3))
  results = []
  for remat in ("none", "block"):
    config = _toy_network_config(name, remat)
    model, sde = builders.build_model(config), builders.build_sde(config)
    variables = jax.jit(lambda k, m=model: m.init({"params": k, "dropout": k}, x, jnp.zeros((2,), jnp.int32)))(
        jax.random.PRNGKey(0))
    loss_fn = train.make_loss_fn(config, model, sde)
    results.append(jax.jit(jax.value_and_grad(loss_fn))(variables["params"], x, jax.random.PRNGKey(3)))
  _assert_close(results[0], results[1])


# ---- n_jitted_steps: the fused steps' memory -----------------------------------------------------------

class WideNet(nn.Module):
  """An MLP whose activations (batch x 256, with dropout) dwarf its parameters."""

  @nn.compact
  def __call__(self, x, labels, train: bool = False):
    emb = jnp.log(labels)[:, None]
    h = x
    for _ in range(4):
      h = nn.silu(nn.Dense(256)(h) + nn.Dense(256)(emb))
      h = nn.Dropout(0.1, deterministic=not train)(h)
    return nn.Dense(x.shape[-1])(h)


def test_fused_steps_do_not_hold_every_steps_activations():
  """XLA's static analysis of 1 and 4 fused steps (batch 2048; activations ~40x the state): the rolled
  ``lax.scan`` (the default off the CPU) keeps one step's temporaries; the unrolled one (the CPU default)
  holds more than one step's (about 2.2x at batch 512 and 4096 with jax 0.10.2) but not 4."""
  batch = 2048
  config = _toy_config(batch_size=batch, n_jitted=1)
  model, sde, optimizer = WideNet(), builders.build_sde(config), builders.build_optimizer(config)
  state = jax.eval_shape(lambda k: train.init_train_state(k, config, model, optimizer, (1, DIM)),
                         jax.random.PRNGKey(0))
  step = train.make_train_step(config, model, sde, optimizer)
  temp = {}
  for n, unroll in ((1, False), (4, False), (4, True)):  # one step is never wrapped in a loop
    fn = jax.jit(train.make_fused_train_step(step, unroll=unroll), donate_argnums=0)
    xs = jax.ShapeDtypeStruct((n, batch, DIM), jnp.float32)
    temp[n, unroll] = fn.lower(state, xs, jax.random.PRNGKey(0)).compile().memory_analysis().temp_size_in_bytes
  temp[1, True] = temp[1, False]
  state_bytes = sum(a.size * a.dtype.itemsize for a in jax.tree_util.tree_leaves(state))
  assert temp[1, False] > 10 * state_bytes  # the temporaries are activations
  assert temp[4, False] <= 1.1 * temp[1, False], temp
  assert temp[4, True] < 4 * temp[1, True], temp


# ---- scripts/bench_memory.py ---------------------------------------------------------------------------

_TINY = ["--config", "configs/vp/ddpm/cifar10.py", "--config.data.image_size=8", "--config.model.nf=32",
         "--config.model.ch_mult=(1,2)", "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=(4,)"]


def _bench_memory(*args):
  env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "scripts/bench_memory.py", *_TINY, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)


def _check_line(proc, n_devices):
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = json.loads(proc.stdout.strip().splitlines()[-1])
  for name in ("bytes_per_device", "temp_bytes", "argument_bytes", "output_bytes", "alias_bytes", "flops"):
    assert line[name] > 0, (name, line)
  assert line["bytes_per_device"] == (line["argument_bytes"] + line["output_bytes"] + line["temp_bytes"]
                                      - line["alias_bytes"])
  assert line["alias_bytes"] >= 0.9 * line["output_bytes"]  # the donated state is updated in place
  assert line["n_devices"] == n_devices and line["device"].startswith("cpu")
  return line


@pytest.mark.slow  # ~60 s of compiles on 2 quiet cores (170 s loaded); as bench_train.py's smoke test
def test_bench_memory_train_step_on_two_simulated_devices():
  line = _check_line(_bench_memory("--batch", "4", "--devices", "2", "--remat", "best", "--grad_accum", "2",
                                   "--parts", "train"), 2)
  assert line["remat"] != "none" and line["grad_accum_steps"] == 2 and line["batch"] == 4


@pytest.mark.slow  # adds the sampler's and the Inception network's compiles
def test_bench_memory_all_parts():
  proc = _bench_memory("--batch", "2", "--inception_batch", "2")
  line = _check_line(proc, 1)
  assert line["sampler_bytes_per_device"] > 0 and line["inception_bytes_per_device"] > 0
  assert "sampler (" in proc.stdout and "inception (" in proc.stdout


def test_bench_memory_rejects_a_batch_that_does_not_split_before_compiling():
  proc = _bench_memory("--batch", "6", "--devices", "2", "--grad_accum", "2")
  assert proc.returncode == 2 and "does not split over 2 device(s) x 2 micro-batch(es)" in proc.stderr
