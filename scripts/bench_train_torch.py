"""Time the training step of the ORIGINAL PyTorch implementation (score_sde_pytorch): the baseline.

  python scripts/bench_train_torch.py --original PATH --config CONFIG --batch B --steps S [--device cuda]
      [--ops {cuda,native}] [--config.x=y ...]

``PATH`` is a checkout of yang-song/score_sde_pytorch; nothing of it is copied into this repository. The
step is the original's own, built as its ``run_lib.train`` builds it: ``models.utils.create_model(config)``
(the network in ``torch.nn.DataParallel``), ``models.ema.ExponentialMovingAverage``,
``losses.get_optimizer`` (Adam), ``losses.optimization_manager`` (warm-up, gradient clipping) and
``losses.get_step_fn(sde, train=True, ...)`` (continuous DSM loss, backward, optimizer step, EMA update),
with the SDE built from ``training.sde`` as ``run_lib`` does. The config is the ORIGINAL's config file
(``--config`` is looked up inside ``PATH``; its file names are the same as score_jax's), with
``config.device`` = ``--device`` (cpu by default, or cuda), ``training.batch_size = B`` and any
``--config.<section>.<field>=<value>`` overrides (parsed as in ``bench_train.py``). The inputs are random
images ``[B, C, H, W]`` on that device, scaled like data (uniform in [-1, 1] if ``data.centered``, else
[0, 1], as the original's ``get_data_scaler``).

The CUDA extensions (``--ops``). The original's ``op`` package (``op/fused_act.py``, ``op/upfirdn2d.py``)
compiles two CUDA extensions with ``torch.utils.cpp_extension.load`` when it is imported. Of the two, the
networks call only ``upfirdn2d`` (NCSN++'s FIR up/downsampling, ``models/up_or_down_sampling.py``), which
runs pure PyTorch (``upfirdn2d_native``) for CPU tensors and the extension for CUDA tensors.

- ``--ops cuda`` (the default with ``--device cuda``): ``op`` is imported as the original ships it, so the
  extensions are compiled (nvcc and ninja needed; the build time is reported as ``ops_build_s``, not in
  the step time) and NCSN++ runs the original's CUDA kernel. This is the original as its users run it.
- ``--ops native`` (the default, and the only choice, on CPU): ``op`` is imported with ``load`` replaced by a
  stub that builds nothing (:func:`import_original`); the stub raises if anything calls into the missing
  extension. On CUDA, ``models.up_or_down_sampling.upfirdn2d`` is then rebound to the original's own
  ``upfirdn2d_native`` (pure PyTorch), for a machine where the extensions do not compile.

Timing: one untimed warm-up step, then ``--steps`` steps, each timed with ``time.perf_counter`` (after
``torch.cuda.synchronize()`` on CUDA; eager PyTorch on CPU is synchronous); ``step_s`` is the median and
``images_per_s`` = B / ``step_s``. There is no compilation (``compile_s`` is 0); the warm-up step's time is
reported as ``warmup_s``. On CPU PyTorch uses ``os.cpu_count()`` threads (``--threads``). On CUDA the
TF32 switches are left at PyTorch's defaults and reported (``allow_tf32``: cuDNN convolutions use TF32,
matrix products do not, by default), as is ``torch.backends.cudnn.benchmark`` (off, as the original leaves
it). The last line printed is one JSON object with the keys of bench_train.py's::

  {"images_per_s": ..., "step_s": ..., "compile_s": 0.0, "device": "cpu", ...}

Example (from the repository root, with the virtualenv active; a checkout materialised from a mirror)::

  mkdir -p /tmp/score_sde_pytorch
  git -C /path/to/score_sde_pytorch.git archive HEAD | tar -x -C /tmp/score_sde_pytorch
  python scripts/bench_train_torch.py --original /tmp/score_sde_pytorch \\
      --config configs/ve/cifar10_ncsnpp_continuous.py --batch 8 --steps 5
  python scripts/bench_train_torch.py --original /tmp/score_sde_pytorch --device cuda \\
      --config configs/ve/cifar10_ncsnpp_continuous.py --batch 128 --steps 20
"""

# No `from __future__ import annotations`, as in the other bench scripts: tests load this file with importlib.
import argparse
import contextlib
import importlib.util
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
import types
from typing import Sequence

_SCRIPTS = pathlib.Path(__file__).resolve().parent
# The original's modules that must come from --original (checked before importing anything of it).
_ORIGINAL_FILES = ("losses.py", "sde_lib.py", "models/utils.py", "models/ema.py", "op/__init__.py", "configs")
# Top-level names the original's modules take; any already imported from elsewhere would shadow them.
_ORIGINAL_PACKAGES = ("configs", "models", "op", "losses", "sde_lib")
DEVICES = ("cpu", "cuda")
# How the original's op/ extensions are provided (see the module docstring).
OPS = ("cuda", "native")


def _load_bench_train():
  """scripts/bench_train.py as a module, for its --config.* override parser and --shrink overrides.

  It imports jax (and score_jax) but runs nothing on a JAX backend, so no XLA threads compete with
  PyTorch's.
  """
  name = "_bench_script_bench_train"
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(name, _SCRIPTS / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules[name]


# ---- the original's code -------------------------------------------------------------------------------

def _check_original(root: pathlib.Path) -> None:
  missing = [f for f in _ORIGINAL_FILES if not (root / f).exists()]
  if missing:
    raise FileNotFoundError(f"--original {str(root)!r} is not a score_sde_pytorch checkout: it lacks {missing}")


class _NoExtension(types.ModuleType):
  """Stands in for a CUDA extension that was not built; any use is an error."""

  def __getattr__(self, name):
    raise RuntimeError(f"the CUDA extension {self.__name__!r} was not built (CPU benchmark); the original's code "
                       f"called {self.__name__}.{name}, i.e. it took its CUDA path")


def _stub_load(name, *args, **kwargs):
  """``torch.utils.cpp_extension.load`` that compiles nothing."""
  return _NoExtension(name)


@contextlib.contextmanager
def _without_extension_builds():
  """``torch.utils.cpp_extension.load`` replaced by :func:`_stub_load` inside the block."""
  import torch.utils.cpp_extension as cpp_extension

  original_load = cpp_extension.load
  cpp_extension.load = _stub_load
  try:
    yield
  finally:
    cpp_extension.load = original_load


def _native_upfirdn2d(upfirdn2d_module):
  """``upfirdn2d(input, kernel, up, down, pad)`` that always takes the original's pure-PyTorch path."""
  native = upfirdn2d_module.upfirdn2d_native

  def upfirdn2d(input, kernel, up=1, down=1, pad=(0, 0)):
    return native(input, kernel, up, up, down, down, pad[0], pad[1], pad[0], pad[1])

  return upfirdn2d


def import_original(root: str | pathlib.Path, ops: str = "native") -> types.SimpleNamespace:
  """The original's modules from the checkout at ``root``.

  ``op/fused_act.py`` and ``op/upfirdn2d.py`` run ``from torch.utils.cpp_extension import load`` and call
  ``load(...)`` at import time. With ``ops='native'`` they are imported while ``load`` is
  :func:`_stub_load`, so they bind the stub and build nothing, and the networks' ``upfirdn2d`` is rebound to
  the original's ``upfirdn2d_native`` for tensors on any device (on CPU that is the path the original takes
  anyway). With ``ops='cuda'`` ``op`` is imported unchanged: the extensions are compiled there and then.

  Returns:
    A namespace with ``losses``, ``sde_lib``, ``mutils`` (models.utils), ``ema`` (models.ema), ``op``,
    ``ops`` and ``ops_build_s`` (the seconds the import of ``op`` took: the extension build with 'cuda').
  """
  if ops not in OPS:
    raise ValueError(f"ops={ops!r}: expected one of {list(OPS)}")
  root = pathlib.Path(root).resolve()
  _check_original(root)
  clashes = [n for n in _ORIGINAL_PACKAGES if n in sys.modules
             and not str(getattr(sys.modules[n], "__file__", "") or "").startswith(str(root))]
  if clashes:
    raise RuntimeError(f"modules {clashes} are already imported from elsewhere and would shadow the original's")
  if str(root) not in sys.path:
    sys.path.insert(0, str(root))
  start = time.perf_counter()
  if ops == "cuda":
    try:
      import op
    except Exception as e:  # a failed nvcc/ninja build raises RuntimeError, OSError or CalledProcessError
      raise RuntimeError(f"the original's CUDA extensions (op/) did not build ({type(e).__name__}: {e}); "
                         "--ops native runs its pure-PyTorch upfirdn2d instead") from e
  else:
    with _without_extension_builds():
      import op
  ops_build_s = time.perf_counter() - start
  import losses
  import sde_lib

  # Importing ddpm, ncsnpp and ncsnv2 registers the models, as run_lib does.
  from models import ddpm, ema, ncsnpp, ncsnv2, up_or_down_sampling  # noqa: F401
  from models import utils as mutils
  if ops == "native":
    up_or_down_sampling.upfirdn2d = _native_upfirdn2d(sys.modules["op.upfirdn2d"])
  return types.SimpleNamespace(losses=losses, sde_lib=sde_lib, mutils=mutils, ema=ema, op=op, ops=ops,
                               ops_build_s=ops_build_s)


def load_original_config(root: pathlib.Path, config: str):
  """``get_config()`` of the original's config file ``config`` (relative to ``root`` unless absolute)."""
  path = pathlib.Path(config)
  if not path.is_absolute():
    path = root / path
  if not path.is_file():
    raise FileNotFoundError(f"config {config!r} not found in the original checkout {str(root)!r} ({path})")
  spec = importlib.util.spec_from_file_location(f"_original_config_{abs(hash(str(path)))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)  # its `from configs.default_... import` resolves in root (on sys.path)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"config file {str(path)!r} defines no get_config()")
  return module.get_config()


def build_sde(original, config):
  """The SDE of ``training.sde``, as the original's ``run_lib.train`` builds it."""
  name, m = config.training.sde.lower(), config.model
  if name == "vpsde":
    return original.sde_lib.VPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
  if name == "subvpsde":
    return original.sde_lib.subVPSDE(beta_min=m.beta_min, beta_max=m.beta_max, N=m.num_scales)
  if name == "vesde":
    return original.sde_lib.VESDE(sigma_min=m.sigma_min, sigma_max=m.sigma_max, N=m.num_scales)
  raise ValueError(f"unknown training.sde {config.training.sde!r}; expected vpsde, subvpsde or vesde")


# ---- command line --------------------------------------------------------------------------------------

def build_parser(bench_train) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="bench_train_torch.py",
      usage=("%(prog)s --original PATH --config CONFIG --batch B --steps S [--device {cpu,cuda}] "
             "[--ops {cuda,native}] [--shrink] [--config.<section>.<field>=<value> ...]"),
      description=(
          "Time the training step of the original PyTorch implementation (score_sde_pytorch) on CPU or CUDA,\n"
          "the baseline for scripts/bench_train.py: its own create_model, ExponentialMovingAverage, Adam with\n"
          "optimization_manager and losses.get_step_fn, on random images, with the original's config file.\n"
          "--ops cuda builds the original's CUDA extensions (op/, needs nvcc and ninja); --ops native runs its\n"
          "pure-PyTorch upfirdn2d instead (see the module docstring). One warm-up step, then --steps timed\n"
          "steps; the last line is JSON: images_per_s, step_s (median), compile_s (0: eager), device,\n"
          "n_params, batch, ops, ops_build_s, ..."),
      epilog=(
          "config overrides: --config.<section>.<field>=<value>, as in bench_train.py (config.device is --device).\n\n"
          "example:\n"
          "  git -C MIRROR archive HEAD | tar -x -C /tmp/score_sde_pytorch\n"
          "  python scripts/bench_train_torch.py --original /tmp/score_sde_pytorch \\\n"
          "      --config configs/ve/cifar10_ncsnpp_continuous.py --batch 8 --steps 5\n"
          "  python scripts/bench_train_torch.py --original /tmp/score_sde_pytorch --device cuda \\\n"
          "      --config configs/ve/cifar10_ncsnpp_continuous.py --batch 128 --steps 20"),
      formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
  parser.add_argument("--original", required=True, metavar="PATH",
                      help="a checkout of yang-song/score_sde_pytorch (its code and configs are used)")
  parser.add_argument("--config", required=True, metavar="CONFIG",
                      help="the original's config file, relative to PATH unless absolute, e.g. "
                           "configs/ve/cifar10_ncsnpp_continuous.py")
  parser.add_argument("--batch", type=bench_train._positive_int, required=True, metavar="B", help="batch size")
  parser.add_argument("--steps", type=bench_train._positive_int, required=True, metavar="S",
                      help="timed steps after one untimed warm-up step; the median is reported")
  parser.add_argument("--shrink", action="store_true",
                      help=("tiny network of the same family, for smoke tests (as bench_train.py): "
                            + ", ".join(f"{k}={v}" for k, v in bench_train.SHRINK.items())))
  parser.add_argument("--device", choices=DEVICES, default="cpu",
                      help="config.device of the original, where the step runs (default: %(default)s)")
  parser.add_argument("--ops", choices=OPS, default=None,
                      help="the original's op/ extensions: 'cuda' builds them (default with --device cuda), "
                           "'native' runs its pure-PyTorch upfirdn2d (the only choice on cpu)")
  parser.add_argument("--threads", type=bench_train._positive_int, default=os.cpu_count(),
                      help="torch.set_num_threads on cpu (default: os.cpu_count() = %(default)s)")
  parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed (default: %(default)s)")
  return parser


def parse_args(argv: Sequence[str] | None = None):
  """Parse ``argv``, import the original and build its config; every error (exit status 2) is raised here.

  Returns:
    ``(args, original, config)``.
  """
  bench_train = _load_bench_train()
  parser = build_parser(bench_train)
  args, rest = parser.parse_known_args(argv)
  try:
    overrides = bench_train.parse_overrides(rest)
  except ValueError as e:
    parser.error(str(e))
  keys = {dotted for dotted, _ in overrides}
  if "training.batch_size" in keys or "device" in keys:
    parser.error("set the batch size with --batch B and the device with --device, not with --config.*")
  if args.ops is None:
    args.ops = "cuda" if args.device == "cuda" else "native"
  if args.device == "cpu" and args.ops == "cuda":
    parser.error("--ops cuda needs --device cuda: on cpu the original runs its pure-PyTorch upfirdn2d")
  import torch

  if args.device == "cuda" and not torch.cuda.is_available():
    parser.error(f"--device cuda: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is "
                 "False); run on a machine with an NVIDIA GPU and a CUDA build of PyTorch, or use --device cpu")
  root = pathlib.Path(args.original).resolve()
  try:
    original = import_original(root, ops=args.ops)
    config = load_original_config(root, args.config)
  except (FileNotFoundError, AttributeError, RuntimeError) as e:
    parser.error(str(e))
  try:
    if args.shrink:
      bench_train.shrink(config)
    bench_train.apply_overrides(config, overrides)
    build_sde(original, config)
  except ValueError as e:
    parser.error(str(e))
  config.device = torch.device(args.device)
  config.training.batch_size = args.batch
  if not config.training.continuous:
    parser.error("training.continuous is False: this benchmark times the continuous (SDE) training step")
  return args, original, config


def bench(args, original, config) -> dict:
  """Build and time the original's training step; the result dict (the JSON line)."""
  import torch

  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  cuda = args.device == "cuda"
  sync = torch.cuda.synchronize if cuda else (lambda: None)
  score_model = original.mutils.create_model(config)
  ema = original.ema.ExponentialMovingAverage(score_model.parameters(), decay=config.model.ema_rate)
  optimizer = original.losses.get_optimizer(config, score_model.parameters())
  state = dict(optimizer=optimizer, model=score_model, ema=ema, step=0)
  sde = build_sde(original, config)
  t = config.training
  step_fn = original.losses.get_step_fn(sde, train=True, optimize_fn=original.losses.optimization_manager(config),
                                        reduce_mean=t.reduce_mean, continuous=t.continuous,
                                        likelihood_weighting=t.likelihood_weighting)
  n_params = sum(p.numel() for p in score_model.parameters())
  d = config.data
  x = torch.rand(args.batch, d.num_channels, d.image_size, d.image_size, device=config.device)  # [B, C, H, W]
  batch = 2.0 * x - 1.0 if d.centered else x
  if cuda:
    device = f"cuda:{torch.cuda.get_device_name(config.device)}"
    switches = dict(cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
    where = f"{device} ({', '.join(f'{k}={v}' for k, v in switches.items())})"
  else:
    device, switches = "cpu", {}
    where = f"cpu, {torch.get_num_threads()} threads (cpu_count {os.cpu_count()})"
  print(f"torch {torch.__version__} | {where} | python {platform.python_version()} | original {args.original} | "
        f"ops {args.ops} (import {original.ops_build_s:.1f} s) | config {args.config} | "
        f"{config.model.name} {n_params:,} params{' (shrunk)' if args.shrink else ''} | {type(sde).__name__} | "
        f"batch {args.batch} | float32", flush=True)

  sync()
  start = time.perf_counter()
  step_fn(state, batch)  # warm-up
  sync()
  warmup_s = time.perf_counter() - start
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    loss = step_fn(state, batch)
    sync()
    times.append(time.perf_counter() - start)
  loss = float(loss.item())
  if not math.isfinite(loss):
    raise RuntimeError(f"the training step produced a non-finite loss {loss}")
  step_s = statistics.median(times)
  print(f"{args.batch / step_s:.3f} images/s | step {step_s:.4f} s median, {min(times):.4f} s min over "
        f"{len(times)} (warm-up {warmup_s:.2f} s) | loss {loss:.4g}", flush=True)
  return dict(images_per_s=args.batch / step_s, step_s=step_s, compile_s=0.0, device=device, n_devices=1,
              config=args.config, batch=args.batch, bf16=False, n_params=n_params, min_step_s=min(times),
              times_s=times, warmup_s=warmup_s, loss=loss, threads=torch.get_num_threads(), shrink=args.shrink,
              torch=torch.__version__, implementation="score_sde_pytorch", ops=args.ops,
              ops_build_s=original.ops_build_s, **switches)


def main(argv: Sequence[str] | None = None) -> dict:
  """Run the benchmark for ``argv`` (``sys.argv[1:]`` if None); print the JSON line last and return its dict."""
  args, original, config = parse_args(argv)
  result = bench(args, original, config)
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main(sys.argv[1:])
