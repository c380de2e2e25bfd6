"""NCSN++ / DDPM++ against the original JAX code (../shared/fixtures/score_sde_jax).

- Numerics: the small continuous-VE NCSN++ with the original's init and perturbed weights, raw output and
  score.
- Parameter trees: every 'ncsnpp' config of the original, path for path and shape for shape
  (``jax.eval_shape`` only, no compile), built from the fixture's own full config.
- Other option combinations (DDPM blocks, output/input pyramids, 'cat', no FIR) run at tiny sizes, and bad
  options fail with clear errors.
"""

import json

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import SHARED

from score_jax import builders, models
from score_jax.nets import NCSNpp
from score_jax.nets import up_or_down_sampling as ups

JAX_FIXTURES = SHARED / "fixtures" / "score_sde_jax"
NUMERIC = JAX_FIXTURES / "numeric" / "ncsnpp_ve_cont_small"
PARAM_TREES = JAX_FIXTURES / "param_trees"
RTOL = 1e-5


def _require(path):
  if not path.exists():
    pytest.skip(f"reference fixture {path} not found (../shared is absent); set SCORE_JAX_SHARED to its path")
  return path


def _config(fixture_json) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(json.loads(_require(fixture_json).read_text())["config"])


def _shape_tree(variables):
  return {"/".join(k): tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(variables).items()}


def _init_shapes(model, x_shape):
  x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
  labels = jax.ShapeDtypeStruct(x_shape[:1], jnp.int32)
  keys = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  return jax.eval_shape(lambda x, labels: model.init(keys, x, labels, train=False), x, labels)


def assert_rel_close(actual, ref, name):
  """Max abs error within RTOL of the reference's max abs value."""
  err = float(np.max(np.abs(np.asarray(actual, np.float64) - ref)))
  scale = float(np.max(np.abs(ref)))
  assert err <= RTOL * scale, f"{name}: max abs error {err:.3g} > {RTOL} * {scale:.3g}"


# ---------------------------------------------------------------------------------------------------------
# Numeric parity with the original JAX NCSN++ (small continuous VE).


@pytest.fixture(scope="module")
def small_ve():
  config = _config(NUMERIC.with_suffix(".json"))
  io = dict(np.load(_require(NUMERIC.parent / f"{NUMERIC.name}_io.npz")))
  return config, builders.build_model(config), builders.build_sde(config), io


# weights name -> (npz file, suffix of its output keys). The checkpoint fixture's EMA weights (trained for
# two steps, then perturbed) come with their own expected outputs.
SMALL_VE_WEIGHTS = {
    "init": ("_params.npz", "init"),
    "perturbed": ("_params_perturbed.npz", "perturbed"),
    "checkpoint_ema": ("_checkpoint_expected.npz", "params_ema"),
}


@pytest.mark.parametrize("weights", sorted(SMALL_VE_WEIGHTS))
def test_small_ve_matches_reference(small_ve, weights):
  config, model, sde, io = small_ve
  suffix, out_key = SMALL_VE_WEIGHTS[weights]
  arrays = dict(np.load(_require(NUMERIC.parent / f"{NUMERIC.name}{suffix}")))
  variables = flax.traverse_util.unflatten_dict(
      {tuple(k.split("/")): jnp.asarray(v) for k, v in arrays.items() if k.startswith("params/")})
  ref = arrays if weights == "checkpoint_ema" else io
  x = jnp.asarray(ref["x"])
  assert _shape_tree(_init_shapes(model, x.shape)) == _shape_tree(variables)

  out = model.apply(variables, x, jnp.asarray(ref["labels"]), train=False)
  assert_rel_close(out, ref[f"raw_output_{out_key}"], f"raw output ({weights})")
  score = models.get_score_fn(sde, model, variables, train=False, continuous=True)(x, jnp.asarray(ref["t"]))
  assert_rel_close(score, ref[f"score_{out_key}"], f"score ({weights})")


# The parameter trees of every config are compared with the original's in tests/test_configs.py
# (test_model_param_tree_matches_original), built from the ported config files.


TINY = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1)


@pytest.mark.parametrize("options", [
    dict(resblock_type="ddpm", progressive="residual", progressive_input="input_skip", progressive_combine="cat",
         fir=False, embedding_type="positional", continuous=False, scale_by_sigma=True, num_scales=10),
    dict(resblock_type="biggan", progressive="output_skip", progressive_input="input_skip", fir=True,
         embedding_type="positional", scale_by_sigma=False, skip_rescale=False, conditional=False, centered=True),
], ids=["ddpm-residual-cat", "biggan-outputskip"])
def test_option_combinations_run(options):
  model = NCSNpp(**TINY, **options)
  x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 3))
  labels = jnp.array([0, 7], jnp.int32) if options.get("scale_by_sigma") else jnp.array([10.0, 900.0])
  # Random weights of the right shapes: model.init would compile every initialiser (slow on CPU), and a
  # zero-initialised last layer would hide most of the network.
  shapes = _init_shapes(model, x.shape)
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype), shapes)

  @jax.jit
  def run(variables, x, labels, key):
    return (model.apply(variables, x, labels, train=False),
            model.apply(variables, x, labels, train=True, rngs={"dropout": key}))

  out_eval, out_train = run(variables, x, labels, jax.random.PRNGKey(2))
  assert out_eval.shape == x.shape and out_train.shape == x.shape
  assert bool(jnp.all(jnp.isfinite(out_eval))) and bool(jnp.all(jnp.isfinite(out_train)))
  assert not np.allclose(out_eval, out_train)  # dropout is active only in training


# ---------------------------------------------------------------------------------------------------------
# FIR resampling against a direct NumPy implementation of upfirdn (zero insertion, pad, convolve, decimate).


def _upfirdn2d_numpy(x, k, up, down, pad):
  b, h, w, c = x.shape
  z = np.zeros((b, h * up, w * up, c), x.dtype)
  z[:, ::up, ::up, :] = x
  p0, p1 = pad
  z = np.pad(z, ((0, 0), (max(p0, 0), max(p1, 0)), (max(p0, 0), max(p1, 0)), (0, 0)))
  z = z[:, max(-p0, 0):z.shape[1] - max(-p1, 0), max(-p0, 0):z.shape[2] - max(-p1, 0), :]
  kh = k.shape[0]
  out = np.zeros((b, z.shape[1] - kh + 1, z.shape[2] - kh + 1, c), np.float64)
  for i in range(kh):  # true convolution: the kernel is flipped
    for j in range(kh):
      out += k[kh - 1 - i, kh - 1 - j] * z[:, i:i + out.shape[1], j:j + out.shape[2], :]
  return out[:, ::down, ::down, :]


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (1, 1)), (2, 1, (-1, 0))])
def test_upfirdn2d_matches_numpy(rng, up, down, pad):
  x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
  k = ups.setup_kernel(rng.uniform(0.5, 1.5, size=4))  # asymmetric, so a missing flip would show
  got = ups.upfirdn2d(jnp.asarray(x), k, up=up, down=down, pad=pad)
  np.testing.assert_allclose(got, _upfirdn2d_numpy(x, k, up, down, pad), rtol=1e-5, atol=1e-5)


def test_upfirdn2d_non_separable_kernel_matches_numpy(rng):
  x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
  k = rng.uniform(0.5, 1.5, size=(3, 3)).astype(np.float32)  # rank 3: the depthwise-convolution path
  assert ups._separable_factors(k) is None
  for up, down, pad in [(2, 1, (1, 1)), (1, 2, (1, 1))]:
    got = ups.upfirdn2d(jnp.asarray(x), k, up=up, down=down, pad=pad)
    np.testing.assert_allclose(got, _upfirdn2d_numpy(x, k, up, down, pad), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("up,down,pad", [(2, 1, (2, 1)), (1, 2, (1, 1)), (1, 1, (2, 1)), (2, 1, (-1, 0))])
def test_separable_fir_values_and_gradients_match_the_depthwise_convolution(rng, monkeypatch, up, down, pad):
  """A separable kernel is filtered as two 1-D passes; values and input gradients equal the 2-D path's."""
  x = jnp.asarray(rng.standard_normal((2, 7, 7, 3)).astype(np.float32))
  k = ups.setup_kernel(rng.uniform(0.5, 1.5, size=4))
  assert ups._separable_factors(k) is not None
  weights = jnp.asarray(rng.standard_normal(ups.upfirdn2d(x, k, up=up, down=down, pad=pad).shape).astype(np.float32))

  def run():
    f = lambda x: jnp.sum(weights * ups.upfirdn2d(x, k, up=up, down=down, pad=pad))
    return ups.upfirdn2d(x, k, up=up, down=down, pad=pad), jax.grad(f)(x)

  out, grad = run()
  monkeypatch.setattr(ups, "_separable_factors", lambda k: None)
  out_conv, grad_conv = run()
  np.testing.assert_allclose(out, out_conv, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, grad_conv, rtol=1e-5, atol=1e-6)


def test_fir_resampling_keeps_constants_and_shapes():
  x = jnp.ones((1, 8, 8, 2))
  up = ups.upsample_2d(x, (1, 3, 3, 1))
  down = ups.downsample_2d(x, (1, 3, 3, 1))
  assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
  np.testing.assert_allclose(up[:, 2:-2, 2:-2], 1.0, rtol=1e-6)  # away from the zero-padded border
  np.testing.assert_allclose(down[:, 1:-1, 1:-1], 1.0, rtol=1e-6)
  w = jnp.ones((3, 3, 2, 5))
  assert ups.upsample_conv_2d(x, w, (1, 3, 3, 1)).shape == (1, 16, 16, 5)
  assert ups.conv_downsample_2d(x, w, (1, 3, 3, 1)).shape == (1, 4, 4, 5)


# ---------------------------------------------------------------------------------------------------------
# Bad options fail up front with a message naming the value.


def _cifar_ncsnpp_config():
  return _config(PARAM_TREES / "configs__ve__cifar10_ncsnpp_continuous.json")


@pytest.mark.parametrize("field,value,match", [
    ("resblock_type", "resnet", "resblock_type 'resnet'"),
    ("progressive", "skip", "progressive 'skip'"),
    ("progressive_input", "skip", "progressive_input 'skip'"),
    ("progressive_combine", "mean", "progressive_combine 'mean'"),
    ("embedding_type", "learned", "embedding_type 'learned'"),
    ("attention_type", "legacy", "attention_type 'legacy'"),
    ("nonlinearity", "gelu", "nonlinearity 'gelu'"),
    ("conv_size", 5, "conv_size 5"),
    ("nf", 18, "18 channels"),
    ("nf", 2, "2 channels"),
])
def test_bad_model_options(field, value, match):
  config = _cifar_ncsnpp_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=match):
    builders.build_model(config)


def test_bad_image_size():
  config = _cifar_ncsnpp_config()
  config.data.image_size = 36  # ch_mult has 4 levels: needs a multiple of 8
  with pytest.raises(ValueError, match="image_size 36 must be divisible by .* 8"):
    builders.build_model(config)
  model = NCSNpp(**TINY)
  with pytest.raises(ValueError, match=r"image size \(5, 5\) must be divisible"):
    jax.eval_shape(lambda x, t: model.init(jax.random.PRNGKey(0), x, t), jnp.zeros((1, 5, 5, 3)), jnp.ones((1,)))


def test_fourier_needs_continuous_and_fourier_scale():
  config = _cifar_ncsnpp_config()
  config.training.continuous = False
  with pytest.raises(ValueError, match="fourier.*continuous"):
    builders.build_model(config)
  config = _cifar_ncsnpp_config()
  del config.model["fourier_scale"]
  with pytest.raises(ValueError, match="model.fourier_scale is missing"):
    builders.build_model(config)
