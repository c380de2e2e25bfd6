"""Convert the original Score-SDE checkpoints (PyTorch ``.pth`` and Flax ``checkpoint_N``) into score_jax.

Usage::

  python -m score_jax.convert --from score_sde_pytorch --config configs/ve/cifar10_ncsnpp_continuous.py \
      checkpoint_26.pth converted/cifar10_ncsnpp_continuous
  python -m score_jax.convert --from score_sde --config configs/ve/cifar10_ncsnpp_continuous.py \
      checkpoint_26 converted/cifar10_ncsnpp_continuous_flax

The result is an orbax checkpoint ``{'params': ..., 'step': ...}``; read it back with :func:`load_converted`.
By default the EMA weights are converted (what the originals evaluate and sample with); ``--no-ema`` takes
the raw training weights.

How the PyTorch weights are matched: score_sde_pytorch keeps the top-level layers of NCSN++/DDPM++/DDPM in
one ``all_modules`` list, in the order the forward pass uses them, while the Flax networks create their
top-level modules inline in that same order. The i-th parameter-holding ``all_modules`` entry is therefore
paired with the i-th parameter-holding top-level Flax module; inside a pair the sub-module names agree
(``GroupNorm_0``, ``Conv_1``, ``NIN_2``, ...). Every pairing is checked by key and shape, and any mismatch
is reported before anything is written.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile
from typing import Any, Mapping, Sequence

import numpy as np

from score_jax import cli
from score_jax.errors import UserError

__all__ = [
    "param_shapes", "convert_pytorch_state_dict", "from_pytorch_state_dict", "load_pytorch_checkpoint",
    "load_score_sde_checkpoint", "save_converted", "load_converted", "load_config", "main",
]

# Paths are flax variable paths joined with '/', starting with the collection: 'params/Conv_0/kernel'.
Shapes = Mapping[str, tuple]

_TORCH_PREFIX = "module."  # added by torch.nn.DataParallel, which the original always wraps the model in
_TORCH_BUFFERS = frozenset({"sigmas"})  # registered buffers of the original networks, not parameters
_TORCH_LIST = "all_modules"
_FOURIER = "GaussianFourierProjection"  # its W is a frozen parameter: in state_dict, not in the EMA list
_MAX_REPORTED = 12  # mismatches listed in an error message


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the network of the config (missing/unexpected keys, other shapes)."""


# --------------------------------------------------------------------------------------------- target


def param_shapes(config) -> dict[str, tuple]:
  """Shapes of the Flax variables of ``config``'s network, in creation order, without computing them.

  Returns:
    ``{'params/<module>/.../<leaf>': shape}`` ordered as the network creates its parameters (jax pytree
    flattening would sort the keys and lose this order, which the PyTorch pairing needs).
  """
  import jax
  import jax.numpy as jnp

  from score_jax import builders

  model = builders.build_model(config)
  d = config.data
  x = jnp.zeros((1, d.image_size, d.image_size, d.num_channels), jnp.float32)  # [B, H, W, C]
  labels = jnp.zeros((1,), jnp.int32)  # as the original's init_model
  shapes: dict[str, tuple] = {}

  def init():
    key = jax.random.PRNGKey(0)
    variables = model.init({"params": key, "dropout": key}, x, labels, train=False)
    # Inside the trace `variables` is still the Python dict flax built, in creation order.
    shapes.update((path, tuple(leaf.shape)) for path, leaf in _flatten(variables))
    return variables

  jax.eval_shape(init)
  return shapes


def _flatten(tree, prefix: str = ""):
  """(path, leaf) pairs of a nested mapping in its own key order."""
  for name, value in tree.items():
    path = f"{prefix}/{name}" if prefix else str(name)
    if isinstance(value, Mapping):
      yield from _flatten(value, path)
    else:
      yield path, value


def _unflatten(flat: Mapping[str, Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def _check_and_order(flat: Mapping[str, np.ndarray], shapes: Shapes, what: str) -> dict:
  """``flat`` as a nested tree in the order of ``shapes``, or a mismatch error naming the differences."""
  problems = []
  for p, s in shapes.items():  # in the network's order, so the first lines show where it starts to differ
    if p not in flat:
      problems.append(f"missing {p} {tuple(s)}")
    elif tuple(np.shape(flat[p])) != tuple(s):
      problems.append(f"shape of {p}: checkpoint {tuple(np.shape(flat[p]))}, network {tuple(s)}")
  problems += [f"unexpected {p} {tuple(np.shape(v))}" for p, v in flat.items() if p not in shapes]
  if problems:
    _raise_mismatch(what, problems)
  return _unflatten({p: np.asarray(flat[p], dtype=np.float32) for p in shapes})


def _raise_mismatch(what: str, problems: Sequence[str]):
  listed = "\n  ".join(problems[:_MAX_REPORTED])
  more = f"\n  ... and {len(problems) - _MAX_REPORTED} more" if len(problems) > _MAX_REPORTED else ""
  raise CheckpointMismatchError(
      f"{what} does not fit the network of this config ({len(problems)} mismatches); is it the config the "
      f"checkpoint was trained with?\n  {listed}{more}")


# -------------------------------------------------------------------------------------- PyTorch -> Flax


def _torch_leaf(flax_leaf: str) -> str:
  # flax nn.Conv / nn.Dense 'kernel' and nn.GroupNorm 'scale' are torch's 'weight'; others keep their name
  # (custom layers of both originals: NIN 'W'/'b', Fourier 'W', Conv2d 'weight', InstanceNorm++ 'alpha').
  return {"kernel": "weight", "scale": "weight"}.get(flax_leaf, flax_leaf)


def _to_flax(value: np.ndarray, flax_leaf: str, flax_shape: tuple) -> np.ndarray:
  """One torch tensor in the Flax layout of ``flax_leaf``."""
  value = np.asarray(value)
  if flax_leaf in ("kernel", "weight") and value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)  # conv [O, I, kh, kw] -> [kh, kw, I, O]
  elif flax_leaf == "kernel" and value.ndim == 2:
    value = value.T  # nn.Linear [out, in] -> nn.Dense [in, out]
  elif value.ndim == 1 and len(flax_shape) > 1 and all(n == 1 for n in flax_shape[:-1]):
    value = value.reshape(flax_shape)  # per-channel vector stored broadcastable, e.g. [1, 1, 1, C]
  return value


def _unprefixed(key: str) -> str:
  return key[len(_TORCH_PREFIX):] if key.startswith(_TORCH_PREFIX) else key


def _strip(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Drop the DataParallel prefix and the buffers."""
  return {_unprefixed(k): v for k, v in state_dict.items() if _unprefixed(k) not in _TORCH_BUFFERS}


def _pair_torch_keys(torch_shapes: Mapping[str, tuple], shapes: Shapes) -> tuple[dict[str, str], list[str]]:
  """Flax path -> torch key for every Flax parameter, and the list of mismatches (empty when it fits)."""
  torch_groups: dict[int, list[str]] = {}
  problems, outside = [], []
  for k in torch_shapes:
    head, _, rest = k.partition(".")
    index, _, _ = rest.partition(".")
    if head != _TORCH_LIST or not index.isdigit():
      outside.append(k)
      continue
    torch_groups.setdefault(int(index), []).append(k)
  if outside:
    problems.append(f"unexpected {len(outside)} keys outside '{_TORCH_LIST}' ({', '.join(outside[:3])}, ...): "
                    f"only networks that keep their layers in an '{_TORCH_LIST}' list (NCSN++, DDPM++, DDPM) "
                    "can be converted from PyTorch; NCSN/NCSNv2 are not supported")

  flax_groups: dict[str, list[str]] = {}
  for p in shapes:
    collection, top, *_ = p.split("/")
    if collection != "params":
      problems.append(f"network variable {p} is not a parameter; the originals' networks have only 'params'")
      continue
    flax_groups.setdefault(top, []).append(p)

  if len(torch_groups) != len(flax_groups):
    problems.append(f"{len(torch_groups)} parameter-holding {_TORCH_LIST} entries in the checkpoint, "
                    f"{len(flax_groups)} parameter-holding modules in the network")

  mapping: dict[str, str] = {}
  for (index, torch_keys), (top, flax_paths) in zip(sorted(torch_groups.items()), flax_groups.items()):
    expected = {}
    for p in flax_paths:
      _, _, *sub, leaf = p.split("/")
      expected[".".join([_TORCH_LIST, str(index), *sub, _torch_leaf(leaf)])] = p
    for k in torch_keys:
      if k not in expected:
        problems.append(f"unexpected {k} {torch_shapes[k]} (paired with network module {top})")
    for k, p in expected.items():
      if k not in torch_shapes:
        problems.append(f"missing {k} for {p} {tuple(shapes[p])}")
        continue
      leaf = p.rsplit("/", 1)[1]
      got = _to_flax(np.empty(torch_shapes[k], np.uint8), leaf, tuple(shapes[p])).shape
      if got != tuple(shapes[p]):
        problems.append(f"shape of {k}: {torch_shapes[k]} -> {got} in Flax layout, network {p} "
                        f"{tuple(shapes[p])}")
      mapping[p] = k
  return mapping, problems


def convert_pytorch_state_dict(state_dict: Mapping[str, Any], shapes: Shapes) -> dict:
  """A score_sde_pytorch ``state_dict`` as Flax variables with the given target shapes.

  Args:
    state_dict: torch key -> array (numpy, or anything ``np.asarray`` reads), keys possibly with the
      ``module.`` prefix; buffers (``sigmas``) are ignored.
    shapes: the network's Flax variable shapes in creation order (:func:`param_shapes`).

  Returns:
    ``{'params': tree}`` (float32 numpy arrays, NHWC/HWIO layouts).

  Raises:
    CheckpointMismatchError: listing the first missing/unexpected keys and shape mismatches.
  """
  params = _strip(state_dict)
  torch_shapes = {k: tuple(np.shape(v)) for k, v in params.items()}
  mapping, problems = _pair_torch_keys(torch_shapes, shapes)
  if problems:
    _raise_mismatch("The PyTorch state_dict", problems)
  flat = {p: _to_flax(params[k], p.rsplit("/", 1)[1], tuple(shapes[p])) for p, k in mapping.items()}
  return _check_and_order(flat, shapes, "The PyTorch state_dict")


def from_pytorch_state_dict(state_dict: Mapping[str, Any], config) -> dict:
  """A score_sde_pytorch ``state_dict`` as the Flax variables ``{'params': ...}`` of ``config``'s network."""
  return convert_pytorch_state_dict(state_dict, param_shapes(config))


def _frozen_torch_keys(state_dict: Mapping[str, Any], shapes: Shapes) -> set[str]:
  """Torch keys of parameters with requires_grad=False (the Fourier features W)."""
  mapping, _ = _pair_torch_keys({k: tuple(np.shape(v)) for k, v in _strip(state_dict).items()}, shapes)
  return {k for p, k in mapping.items() if f"/{_FOURIER}_" in f"/{p}"}


def _import_torch():
  try:
    import torch
  except ImportError as e:
    raise ImportError('Reading PyTorch checkpoints needs PyTorch: pip install -e ".[torch]"') from e
  return torch


def _numpy_safe_globals():
  """The numpy globals a score_sde_pytorch checkpoint needs: its lr is pickled as a numpy float64 scalar.

  The scalar is pickled under ``numpy.core.multiarray`` by numpy 1.x (the released checkpoints) and under
  ``numpy._core.multiarray`` by numpy 2, so both names are allowed for the one function.
  """
  core = getattr(np, "_core", None) or np.core
  scalar = core.multiarray.scalar
  allowed = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
  if hasattr(np, "dtypes"):  # numpy >= 1.25 pickles dtypes through their class
    allowed.append(np.dtypes.Float64DType)
  return allowed


def _read_torch_checkpoint(path) -> dict:
  torch = _import_torch()
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"No PyTorch checkpoint at {path}")
  # weights_only: no arbitrary code runs; only the numpy scalar machinery of the stored lr is allowed.
  with torch.serialization.safe_globals(_numpy_safe_globals()):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(ckpt, Mapping) or "model" not in ckpt:
    got = list(ckpt)[:8] if isinstance(ckpt, Mapping) else type(ckpt).__name__
    raise ValueError(f"{path} is not a score_sde_pytorch checkpoint: expected a dict with 'model', 'ema', "
                     f"'optimizer', 'step'; got {got}")
  return ckpt


def _torch_state_with_ema(ckpt: Mapping, model: dict[str, np.ndarray], shapes: Shapes, path) -> dict:
  """The model state_dict with the EMA shadow parameters in place (the original's ``ema.copy_to``)."""
  model = dict(model)
  ema = ckpt.get("ema")
  if not isinstance(ema, Mapping) or "shadow_params" not in ema:
    raise ValueError(f"{path} has no 'ema' entry with 'shadow_params'; use ema=False (--no-ema) for the raw weights")
  shadow = list(ema["shadow_params"])
  frozen = _frozen_torch_keys(model, shapes)
  # shadow_params follow model.parameters() order, skipping parameters that do not require grad.
  trainable = [k for k in model if _unprefixed(k) not in _TORCH_BUFFERS | frozen]
  if len(shadow) != len(trainable):
    raise CheckpointMismatchError(
        f"{path}: {len(shadow)} EMA shadow parameters but {len(trainable)} trainable parameters in 'model'")
  problems = [f"EMA shadow parameter {i} for {k}: shape {tuple(s.shape)}, model {tuple(model[k].shape)}"
              for i, (k, s) in enumerate(zip(trainable, shadow)) if tuple(s.shape) != tuple(model[k].shape)]
  if problems:
    _raise_mismatch(f"The EMA of {path}", problems)
  for k, s in zip(trainable, shadow):
    model[k] = s.detach().cpu().numpy()
  return model


def _load_pytorch(path, shapes: Shapes, ema: bool) -> tuple[dict, int]:
  ckpt = _read_torch_checkpoint(path)
  model = {k: v.detach().cpu().numpy() for k, v in ckpt["model"].items()}
  variables = convert_pytorch_state_dict(model, shapes)  # first, so a wrong config is reported as such
  if ema:
    variables = convert_pytorch_state_dict(_torch_state_with_ema(ckpt, model, shapes, path), shapes)
  return variables, int(ckpt.get("step", 0))


def load_pytorch_checkpoint(path, config, *, ema: bool = True) -> dict:
  """The Flax variables ``{'params': ...}`` of a score_sde_pytorch ``.pth`` checkpoint.

  Args:
    path: a file written by the original's ``save_checkpoint`` (``{'model', 'ema', 'optimizer', 'step'}``).
    config: the config the checkpoint was trained with.
    ema: the EMA weights (what the original evaluates and samples with) rather than the raw ones.
  """
  _import_torch()  # before building the network, so a missing extra is reported first
  return _load_pytorch(path, param_shapes(config), ema)[0]


# ----------------------------------------------------------------------------------------- Flax original


def _read_score_sde(path) -> Mapping:
  from flax import serialization

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"No score_sde checkpoint file at {path} (expected e.g. .../checkpoints/checkpoint_26)")
  state = serialization.msgpack_restore(path.read_bytes())
  if not isinstance(state, Mapping) or "optimizer" not in state:
    got = list(state)[:8] if isinstance(state, Mapping) else type(state).__name__
    raise ValueError(f"{path} is not a score_sde checkpoint: expected a msgpack state with 'optimizer', "
                     f"'params_ema', 'step', ...; got {got}")
  return state


def _load_score_sde(path, shapes: Shapes, ema: bool) -> tuple[dict, int]:
  state = _read_score_sde(path)
  if ema:
    if "params_ema" not in state:
      raise ValueError(f"{path} has no 'params_ema'; use ema=False (--no-ema) for the raw weights")
    tree = state["params_ema"]
  else:
    tree = state["optimizer"]["target"]
  # The original stores the bare parameter tree, without the 'params' collection level.
  flat = {f"params/{p}": v for p, v in _flatten(tree)}
  return _check_and_order(flat, shapes, f"The score_sde checkpoint {path}"), int(np.asarray(state.get("step", 0)))


def load_score_sde_checkpoint(path, config, *, ema: bool = True) -> dict:
  """The Flax variables ``{'params': ...}`` of a score_sde (Flax original) ``checkpoint_N`` file.

  Args:
    path: the msgpack file written by ``flax.training.checkpoints.save_checkpoint`` in the original.
    config: the config the checkpoint was trained with.
    ema: ``params_ema`` (what the original evaluates and samples with) rather than ``optimizer.target``.
  """
  return _load_score_sde(path, param_shapes(config), ema)[0]


# -------------------------------------------------------------------------------------- orbax round trip


def save_converted(dst, variables: Mapping, step: int) -> pathlib.Path:
  """Write ``{'params': ..., 'step': ...}`` as an orbax checkpoint at ``dst``, which must not exist.

  The checkpoint is written into a temporary directory beside ``dst`` and renamed when complete, so
  ``dst`` either does not exist or holds a whole checkpoint.
  """
  import orbax.checkpoint as ocp

  dst = pathlib.Path(dst).absolute()
  if dst.exists():
    raise FileExistsError(f"{dst} already exists; choose a new destination (nothing was overwritten)")
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / "ckpt", {"params": variables["params"], "step": np.int64(step)})
      ckptr.wait_until_finished()
    if dst.exists():
      raise FileExistsError(f"{dst} appeared while converting; nothing was overwritten")
    os.rename(tmp / "ckpt", dst)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return dst


def _restore(path) -> dict:
  import orbax.checkpoint as ocp

  path = pathlib.Path(path).absolute()
  if not path.is_dir():
    raise FileNotFoundError(f"No converted checkpoint at {path}")
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path)


def load_converted(path, config) -> dict:
  """The variables ``{'params': ...}`` of a checkpoint written by this module, checked against ``config``."""
  restored = _restore(path)
  flat = {f"params/{p}": np.asarray(v) for p, v in _flatten(restored["params"])}
  return _check_and_order(flat, param_shapes(config), f"The converted checkpoint {path}")


# --------------------------------------------------------------------------------------------------- CLI


def load_config(path):
  """``get_config()`` of a config file (see :func:`score_jax.configs_loader.load_config`)."""
  from score_jax import configs_loader

  return configs_loader.load_config(path)


_SOURCES = {"score_sde": _load_score_sde, "score_sde_pytorch": _load_pytorch}


def parser() -> cli.ArgumentParser:
  """``--from``, ``--config`` (with ``--config.section.field=value`` overrides), ``--no-ema``, SRC, DST."""
  p = cli.ArgumentParser(
      prog="python -m score_jax.convert",
      description="Convert a checkpoint of the original Score-SDE code (Flax score_sde or PyTorch "
                  "score_sde_pytorch) into an orbax checkpoint of score_jax. The keys and shapes are "
                  "checked against the config's network before anything is written.",
      epilog="Example: python -m score_jax.convert --from score_sde_pytorch "
             "--config configs/ve/cifar10_ncsnpp_continuous.py checkpoint_24.pth converted/ncsnpp_ve\n"
             "Config fields are set as in the launcher: --config.model.nf=64.")
  p.add_argument("--from", dest="source", required=True, choices=sorted(_SOURCES),
                 help="score_sde: a Flax 'checkpoint_N' msgpack file; score_sde_pytorch: a '.pth' file "
                      "(needs PyTorch: pip install -e \".[torch]\")")
  p.add_config(help="the config file the checkpoint was trained with")
  p.add_argument("--no-ema", dest="ema", action="store_false",
                 help="convert the raw training weights instead of the EMA weights")
  p.add_argument("src", help="the checkpoint file to convert")
  p.add_argument("dst", help="the orbax checkpoint directory to create (must not exist)")
  return p


def _main(args) -> None:
  dst = pathlib.Path(args.dst)
  if dst.exists():
    raise cli.UsageError(f"destination {dst} already exists; refusing to overwrite it, choose a new DST")
  if not os.path.exists(args.src):
    raise FileNotFoundError(f"checkpoint {args.src} not found; give the path of the {args.source} checkpoint")
  cli.check_output_dir(dst.absolute().parent, "DST")
  try:
    variables, step = _SOURCES[args.source](args.src, param_shapes(args.config), args.ema)
  except ImportError as e:  # PyTorch is an optional dependency
    raise UserError(str(e)) from e
  out = save_converted(dst, variables, step)
  n = sum(int(np.prod(np.shape(v))) for _, v in _flatten(variables))
  print(f"Wrote {out}: {n:,} parameters ({'EMA' if args.ema else 'raw'} weights, step {step}) from {args.src}")


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m score_jax.convert`` on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
  return cli.run(_main, argv, parser=parser())


if __name__ == "__main__":
  sys.exit(main())
