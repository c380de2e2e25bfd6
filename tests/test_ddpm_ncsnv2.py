"""DDPM, NCSNv2 (64/128/256 px) and NCSN v1: parameter trees against the original, small numeric checks,
hand-checkable layer maths and bad-input errors.

Full-size networks are only traced with ``jax.eval_shape`` (no compile); numeric tests use 16 px images.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from helpers import SHARED

from score_jax import builders, models, sde_lib
from score_jax.nets import ddpm as ddpm_net
from score_jax.nets import ncsn_layers, ncsnv2, noise_levels, normalization

PARAM_TREES = SHARED / "fixtures" / "score_sde_jax" / "param_trees"


def _load_fixture(file):
  path = PARAM_TREES / file
  if not path.exists():
    pytest.skip(f"reference fixture {path} not found (../shared is absent); set SCORE_JAX_SHARED to its path")
  return json.loads(path.read_text())


def _abstract_init(model, image_size, channels):
  """Shapes of ``model.init`` (no compile) and the parameter paths in flax creation order."""
  order = []

  def init():
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, channels)),
                           jnp.zeros((1,), jnp.int32))
    order.extend("/".join(k) for k in flatten_dict(variables))  # flax keeps creation order here
    return variables

  shapes = jax.eval_shape(init)
  flat = {"/".join(k): tuple(v.shape) for k, v in flatten_dict(shapes).items()}
  return flat, order


def _random_params(model, x, labels, seed=0):
  """A random parameter tree for ``model`` without running its initialisers.

  Traced ``init`` (threefry for hundreds of leaves) takes a minute to compile on a small CPU, so the smoke
  tests draw the values in numpy at a sensible scale instead: kernels ``N(0, 1/fan_in)``, scales and
  embeddings ``1 + N(0, 0.1^2)``, everything else ``N(0, 0.05^2)``. No leaf is zero, so layers that the
  original initialises at (almost) zero take part.
  """
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, labels))["params"]
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name in ("kernel", "W"):
      std = 1 / np.sqrt(np.prod(leaf.shape[:-1]))
      return jnp.asarray(std * rng.normal(size=leaf.shape), jnp.float32)
    center = 1.0 if name in ("scale", "gamma", "alpha", "embedding") else 0.0
    spread = 0.1 if center else 0.05
    return jnp.asarray(center + spread * rng.normal(size=leaf.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


# --------------------------------------------------------------------------------------------------------
# 1. Parameter trees of the original's configs.


# The parameter trees of every config are compared with the original's in tests/test_configs.py
# (test_model_param_tree_matches_original), built from the ported config files.


def _ncsnv2_cifar10_config():
  return ml_collections.ConfigDict(_load_fixture("configs__ve__ncsnv2__cifar10.json")["config"])


def test_ncsnv2_256_tree_structure():
  """No reference tree exists for ncsnv2_256 (no config uses it): check its layout at 256 px."""
  config = _ncsnv2_cifar10_config()
  config.model.name = "ncsnv2_256"
  config.data.image_size = 256
  nf = config.model.nf
  flat, _ = _abstract_init(builders.build_model(config), 256, 3)
  blocks = {p.split("/")[1] for p in flat}
  assert {f"ResidualBlock_{i}" for i in range(12)} <= blocks and "ResidualBlock_12" not in blocks
  assert {f"RefineBlock_{i}" for i in range(6)} <= blocks and "RefineBlock_6" not in blocks
  # Three mean-pool downsamplings (blocks 2, 4, 6), then the dilated 4 nf levels.
  for i in (2, 4, 6):
    assert f"params/ResidualBlock_{i}/ConvMeanPool_0/Conv_0/kernel" in flat
  assert flat["params/ResidualBlock_8/Conv_1/kernel"] == (3, 3, 2 * nf, 4 * nf)
  assert flat["params/RefineBlock_0/CRPBlock_0/Conv_0/kernel"] == (3, 3, 4 * nf, 4 * nf)
  assert flat["params/RefineBlock_5/RCUBlock_2/Conv_5/kernel"] == (3, 3, nf, nf)
  assert flat["params/Conv_1/kernel"] == (3, 3, nf, 3)


def test_ncsn_v1_tree_is_ncsnv2_with_conditional_norms():
  """NCSN v1 (not buildable in the original, see the fixture README) has NCSNv2-64's convolutions and a
  ``[num_scales, 3 C]`` conditional InstanceNorm++ table in front of every conv stage."""
  config = _ncsnv2_cifar10_config()
  v2_flat, _ = _abstract_init(builders.build_model(config), 32, 3)
  config.model.name = "ncsn"
  config.model.num_scales = 10
  config.model.sigma_max = 1
  config.model.scale_by_sigma = False
  v1_flat, _ = _abstract_init(builders.build_model(config), 32, 3)

  renames = [("ConditionalResidualBlock", "ResidualBlock"), ("CondRefineBlock", "RefineBlock"),
             ("CondRCUBlock", "RCUBlock"), ("CondMSFBlock", "MSFBlock"), ("CondCRPBlock", "CRPBlock")]

  def as_v2(path):
    for old, new in renames:
      path = path.replace(old, new)
    return path

  v1_convs = {as_v2(p): s for p, s in v1_flat.items() if "Conv" in p.split("/")[-2]}
  assert v1_convs == {p: s for p, s in v2_flat.items() if "Conv" in p.split("/")[-2]}
  tables = {p: s for p, s in v1_flat.items() if "ConditionalInstanceNorm2dPlus" in p}
  assert tables and all(p.endswith("Embed_0/embedding") and s[0] == 10 and s[1] % 3 == 0 for p, s in tables.items())
  # Every RCU conv stage is normalised: 4 stages in each input RCU (2 blocks x 2 stages).
  assert sum("CondRefineBlock_3/CondRCUBlock_0/ConditionalInstanceNorm2dPlus" in p for p in tables) == 4
  assert len(v1_flat) == len(tables) + len(v1_convs)  # nothing else


def test_ddpm_norm_channels_match_the_tree():
  """The channel list behind the GroupNorm validation is the one the network actually normalises."""
  fixture = _load_fixture("configs__vp__ddpm__cifar10.json")
  m = fixture["config"]["model"]
  seen = sorted(shape[0] for path, shape, _ in fixture["tree"] if "GroupNorm" in path and path.endswith("scale"))
  predicted = ddpm_net.ddpm_norm_channels(m["nf"], m["ch_mult"], m["num_res_blocks"])
  # The middle blocks and the attention blocks normalise channel counts that are already in the list.
  assert sorted(set(seen)) == sorted(set(predicted))


# --------------------------------------------------------------------------------------------------------
# 2. Small numeric smoke tests.

SIZE, CHANNELS, BATCH = 8, 3, 2
# Eager and jitted applies (and the two scale_by_sigma variants) round differently.
RTOL, ATOL = 1e-4, 1e-5


def _smoke(model, labels_a, labels_b, key):
  """Random params, outputs for two label sets (batch [x, x]): right shape, finite, label-dependent."""
  x = jax.random.uniform(key, (BATCH, SIZE, SIZE, CHANNELS))
  params = _random_params(model, x, labels_a)
  out = model.apply({"params": params}, jnp.concatenate([x, x]), jnp.concatenate([labels_a, labels_b]))
  out_a, out_b = out[:BATCH], out[BATCH:]
  assert out_a.shape == x.shape and out_a.dtype == jnp.float32
  assert np.all(np.isfinite(out))
  assert not np.allclose(out_a, out_b, rtol=1e-3, atol=1e-4)
  return params, x, out_a


@pytest.mark.slow  # 12 s on 2 cores; the DDPM variable trees of every config are checked in the default suite
def test_ddpm_smoke(key):
  kwargs = dict(nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(SIZE // 2,), dropout=0.1,
                sigma_min=0.01, sigma_max=50.0, num_scales=100)
  model = ddpm_net.DDPM(**kwargs)
  labels = jnp.array([3, 40], jnp.int32)
  params, x, out = _smoke(model, labels, jnp.array([90, 7], jnp.int32), key)
  # Continuous VP labels (t * 999) are floats and work as well.
  out_float = model.apply({"params": params}, x, labels.astype(jnp.float32))
  np.testing.assert_allclose(out_float, out, rtol=RTOL, atol=ATOL)
  # scale_by_sigma divides by the indexed noise level, nothing else changes.
  scaled = ddpm_net.DDPM(**kwargs, scale_by_sigma=True).apply({"params": params}, x, labels)
  sigmas = noise_levels.get_sigmas(0.01, 50.0, 100)
  np.testing.assert_allclose(scaled * sigmas[labels][:, None, None, None], out, rtol=RTOL, atol=ATOL)
  # Dropout is active only with train=True.
  dropped = model.apply({"params": params}, x, labels, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  assert dropped.shape == x.shape and not np.allclose(dropped, out, rtol=1e-3, atol=1e-4)
  # Unconditional: no label embedding, the labels are ignored.
  uncond = ddpm_net.DDPM(**kwargs, conditional=False)
  uncond_params = _random_params(uncond, x, labels)
  assert "Dense_0" not in uncond_params
  np.testing.assert_array_equal(uncond.apply({"params": uncond_params}, x, labels),
                                uncond.apply({"params": uncond_params}, x, labels[::-1]))


# NCSNv2 by default; its 128 / 256 px variants (deeper, same blocks) with SCORE_JAX_SLOW=1 (6 s each on 2 cores).
@pytest.mark.parametrize("cls", [ncsnv2.NCSNv2, pytest.param(ncsnv2.NCSNv2_128, marks=pytest.mark.slow),
                                 pytest.param(ncsnv2.NCSNv2_256, marks=pytest.mark.slow)])
def test_ncsnv2_smoke(cls, key):
  kwargs = dict(nf=8, sigma_min=0.01, sigma_max=50.0, num_scales=20)
  labels = jnp.array([0, 13], jnp.int32)
  params, x, out = _smoke(cls(**kwargs), labels, jnp.array([5, 19], jnp.int32), key)
  # NCSNv2's only noise dependence is the division by sigma.
  unscaled = cls(**kwargs, scale_by_sigma=False).apply({"params": params}, x, labels)
  sigmas = noise_levels.get_sigmas(0.01, 50.0, 20)
  np.testing.assert_allclose(out * sigmas[labels][:, None, None, None], unscaled, rtol=RTOL, atol=ATOL)


def test_ncsn_v1_smoke(key):
  model = ncsnv2.NCSN(nf=8, num_scales=10)
  params, x, out = _smoke(model, jnp.array([0, 9], jnp.int32), jnp.array([4, 2], jnp.int32), key)
  # Labels act per example: swapping the batch order swaps the outputs.
  swapped = model.apply({"params": params}, x[::-1], jnp.array([9, 0], jnp.int32))
  np.testing.assert_allclose(swapped[::-1], out, rtol=RTOL, atol=ATOL)


# --------------------------------------------------------------------------------------------------------
# Hand-checkable layers.

def _np_instance_norm_plus(x, gamma, alpha, beta, eps=1e-5):
  """InstanceNorm++ written out in numpy for x [B, H, W, C] and per-example [B, C] parameters."""
  x = np.asarray(x, np.float64)
  mu = x.mean(axis=(1, 2))  # [B, C]
  var = x.var(axis=(1, 2))
  x_hat = (x - mu[:, None, None, :]) / np.sqrt(var[:, None, None, :] + eps)
  mu_hat = (mu - mu.mean(-1, keepdims=True)) / np.sqrt(mu.var(-1, keepdims=True) + eps)
  return (gamma[:, None, None, :] * (x_hat + alpha[:, None, None, :] * mu_hat[:, None, None, :])
          + beta[:, None, None, :])


def test_conditional_instance_norm_plus_formula(rng):
  c, num_classes = 3, 4
  x = rng.normal(size=(2, 4, 5, c)).astype(np.float32) * np.array([1.0, 3.0, 0.5], np.float32) + 2.0
  y = np.array([2, 0], np.int32)
  layer = normalization.ConditionalInstanceNorm2dPlus(num_classes=num_classes)
  variables = layer.init(jax.random.PRNGKey(0), x, y)
  table = variables["params"]["Embed_0"]["embedding"]
  assert table.shape == (num_classes, 3 * c)
  # gamma and alpha start near 1, beta at 0.
  assert np.all(np.abs(table[:, :2 * c] - 1) < 0.2) and np.all(table[:, 2 * c:] == 0)

  table = rng.normal(size=(num_classes, 3 * c)).astype(np.float32)
  out = layer.apply({"params": {"Embed_0": {"embedding": table}}}, x, y)
  expected = _np_instance_norm_plus(x, table[y, :c], table[y, c:2 * c], table[y, 2 * c:])
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)

  no_bias = normalization.ConditionalInstanceNorm2dPlus(num_classes=num_classes, bias=False)
  out = no_bias.apply({"params": {"Embed_0": {"embedding": table[:, :2 * c]}}}, x, y)
  expected = _np_instance_norm_plus(x, table[y, :c], table[y, c:2 * c], np.zeros((2, c)))
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_instance_norms_formula(rng):
  c = 3
  x = rng.normal(size=(2, 4, 4, c)).astype(np.float32) + np.array([0.0, 1.0, -2.0], np.float32)
  p = {k: rng.normal(size=(1, 1, 1, c)).astype(np.float32) for k in ("alpha", "gamma", "beta", "scale", "bias")}
  flat = {k: np.broadcast_to(v[0, 0], (2, c)) for k, v in p.items()}

  out = normalization.InstanceNorm2dPlus().apply({"params": {k: p[k] for k in ("alpha", "gamma", "beta")}}, x)
  np.testing.assert_allclose(out, _np_instance_norm_plus(x, flat["gamma"], flat["alpha"], flat["beta"]),
                             rtol=1e-4, atol=1e-4)

  x64 = x.astype(np.float64)
  mu, var = x64.mean(axis=(1, 2), keepdims=True), x64.var(axis=(1, 2), keepdims=True)
  out = normalization.InstanceNorm2d().apply({"params": {"scale": p["scale"], "bias": p["bias"]}}, x)
  np.testing.assert_allclose(out, (x64 - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"], rtol=1e-4, atol=1e-4)
  out = normalization.VarianceNorm2d().apply({"params": {"scale": p["scale"]}}, x)
  np.testing.assert_allclose(out, x64 / np.sqrt(var + 1e-5) * p["scale"], rtol=1e-4, atol=1e-4)


def test_get_sigmas_geometric():
  sigmas = np.asarray(noise_levels.get_sigmas(0.01, 50.0, 5))
  np.testing.assert_allclose(sigmas, 50.0 * (0.01 / 50.0) ** (np.arange(5) / 4), rtol=1e-5)


def test_ncsn_conv_init_is_pytorch_default():
  """Kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's Conv2d default."""
  class Probe(nn.Module):
    @nn.compact
    def __call__(self, x):
      return ncsn_layers.ncsn_conv3x3(x, 64)

  x = jnp.zeros((1, 4, 4, 16))
  params = Probe().init(jax.random.PRNGKey(0), x)["params"]["Conv_0"]
  bound = 1 / np.sqrt(3 * 3 * 16)
  for leaf in (params["kernel"], params["bias"]):
    assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.8 * bound
  np.testing.assert_allclose(np.var(params["kernel"]), bound ** 2 / 3, rtol=0.1)


def test_mean_pool_and_residual_resampling(rng):
  x = rng.normal(size=(1, 4, 6, 2)).astype(np.float32)
  pooled = ncsn_layers._mean_pool_2x2(jnp.asarray(x))
  expected = (x[:, ::2, ::2] + x[:, 1::2, ::2] + x[:, ::2, 1::2] + x[:, 1::2, 1::2]) / 4
  np.testing.assert_allclose(pooled, expected, rtol=1e-6)

  norm = normalization.get_normalization("InstanceNorm++")
  x = jnp.asarray(rng.normal(size=(1, 8, 8, 4)).astype(np.float32))
  for dilation, size in ((1, 4), (2, 8)):  # dilated 'down' blocks keep the resolution, as the original
    block = ncsn_layers.ResidualBlock(6, norm, resample="down", dilation=dilation)
    out, _ = jax.eval_shape(lambda b=block: b.init_with_output(jax.random.PRNGKey(0), x))
    assert out.shape == (1, size, size, 6)
  refine = ncsn_layers.RefineBlock((8, 8), 4)
  out, _ = jax.eval_shape(lambda: refine.init_with_output(jax.random.PRNGKey(0), [x, x[:, ::2, ::2]]))
  assert out.shape == (1, 8, 8, 4)


# --------------------------------------------------------------------------------------------------------
# 3. Bad input.

def _small_config(name):
  config = _ncsnv2_cifar10_config() if name != "ddpm" else ml_collections.ConfigDict(
      _load_fixture("configs__vp__ddpm__cifar10.json")["config"])
  config.model.name = name
  return config


@pytest.mark.parametrize("name, field, value, match", [
    ("ddpm", "data.image_size", 30, r"image size 30 must be a positive multiple of 8"),
    ("ddpm", "model.nf", 48, r"GroupNorm with 32 groups .*\[48, 144\]"),
    ("ddpm", "model.normalization", "BatchNorm", r"unknown normalization 'BatchNorm'"),
    ("ddpm", "model.nonlinearity", "gelu", r"Unknown nonlinearity 'gelu'"),
    ("ddpm", "model.dropout", 1.5, r"dropout must be in \[0, 1\), got 1.5"),
    ("ddpm", "data.num_channels", 0, r"num_channels=0"),
    ("ncsnv2_64", "data.image_size", 31, r"image size 31 must be a positive multiple of 2"),
    ("ncsnv2_128", "data.image_size", 30, r"image size 30 must be a positive multiple of 4"),
    ("ncsnv2_256", "data.image_size", 100, r"image size 100 must be a positive multiple of 8"),
    ("ncsnv2_64", "model.normalization", "LayerNorm", r"unknown normalization 'LayerNorm'"),
    ("ncsnv2_64", "model.interpolation", "bicubic", r"Unknown interpolation 'bicubic'"),
    ("ncsnv2_64", "model.sigma_min", 60.0, r"expected 0 < sigma_min < sigma_max"),
    ("ncsn", "model.normalization", "InstanceNorm", r"NCSN v1 expects 'InstanceNorm\+\+'"),
    ("ncsn", "model.num_classes", 7, r"model.num_classes=7 must equal model.num_scales=232"),
])
def test_bad_config_is_rejected_by_the_builder(name, field, value, match):
  config = _small_config(name)
  section, key = field.split(".")
  with config.unlocked():
    config[section][key] = value
  with pytest.raises(ValueError, match=match):
    builders.build_model(config)


def test_group_norm_check_only_applies_to_group_norm():
  config = _small_config("ddpm")
  config.model.nf = 16
  config.model.normalization = "InstanceNorm++"
  model = builders.build_model(config)  # nf=16 is no multiple of GroupNorm's 32 groups: refused only for GroupNorm
  assert model.normalization == "InstanceNorm++" and model.nf == 16


def test_bad_labels_and_images_are_rejected():
  x = jnp.zeros((2, 16, 16, 3))
  model = ncsnv2.NCSNv2(nf=8, num_scales=10)
  with pytest.raises(ValueError, match=r"integer noise-level indices.*float32"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, jnp.array([0.5, 0.2])))
  with pytest.raises(ValueError, match=r"square NHWC images"):
    jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 8, 3)), jnp.zeros((2,), jnp.int32)))
  ddpm = ddpm_net.DDPM(nf=32, ch_mult=(1, 2), num_res_blocks=1, scale_by_sigma=True)
  with pytest.raises(ValueError, match=r"DDPM with scale_by_sigma: expected labels"):
    jax.eval_shape(lambda: ddpm.init(jax.random.PRNGKey(0), x, jnp.array([0.5, 0.2])))


def test_ve_discrete_score_fn_indexes_the_same_sigmas(key):
  """The SDE's SMLD levels (ascending) are the network's (descending): label i <-> sigma_{N-1-i}."""
  sde = sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=20)
  np.testing.assert_allclose(np.asarray(noise_levels.get_sigmas(0.01, 50.0, 20))[::-1], sde.discrete_sigmas,
                             rtol=1e-5)
  model = ncsnv2.NCSNv2(nf=8, sigma_min=0.01, sigma_max=50.0, num_scales=20)
  x = jax.random.uniform(key, (BATCH, SIZE, SIZE, CHANNELS))
  params = _random_params(model, x, jnp.zeros((BATCH,), jnp.int32))
  t = jnp.array([1.0, 0.25])
  score = models.get_score_fn(sde, model, {"params": params}, continuous=False)(x, t)
  direct = model.apply({"params": params}, x, jnp.array([0, 14], jnp.int32))  # round((1 - t) * 19)
  np.testing.assert_allclose(score, direct, rtol=RTOL, atol=ATOL)
