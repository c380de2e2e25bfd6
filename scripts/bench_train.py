"""Time the steady-state training step of score_jax's own training loop for one config.

  python scripts/bench_train.py --config CONFIG --batch B --steps S [--bf16] [--config.x=y ...]

The step is the one training runs, built from the config by the package itself: ``builders.build_model``
/ ``build_sde`` / ``build_optimizer``, ``train.init_train_state``, ``train.make_train_step`` (loss,
gradient, optax update and EMA) fused over ``training.n_jitted_steps`` steps and mapped over the devices
present by ``parallel.make_parallel_train_step`` (``training.parallel``: 'jit' over a mesh, or 'pmap').
The inputs are random images of the config's shape, scaled like data (uniform in [-1, 1] if
``data.centered``, else in [0, 1]); no dataset is read.

The parallel step is compiled ahead of time (``.lower(...).compile()``, timed apart as ``compile_s``), run
once untimed, then ``--steps`` times with ``block_until_ready`` after each call, the train state donated
and threaded through. One call runs ``n_jitted_steps`` optimizer steps (1 here unless
``--config.training.n_jitted_steps`` says otherwise); every number is per optimizer step: ``step_s`` is the
median call time / n_jitted_steps and ``images_per_s`` = B / ``step_s``. FLOPs come from XLA's
``cost_analysis()`` of one device's program of one step (see :func:`_flops_per_device_step`);
``flops_per_step`` is that times the device count. On a GPU in ``bench_networks.PEAK_FLOPS`` the model FLOPs
utilisation is reported against the peak of the compute dtype (bf16 with ``--bf16``; float32 against
both the TF32 tensor-core and the FP32 peak).

The last line printed is one JSON object; other tools parse it::

  {"images_per_s": ..., "step_s": ..., "compile_s": ..., "device": ..., "flops_per_step": ..., ...}

On a CPU backend a step whose XLA buffers exceed the host's available memory is compiled but not run
(as in bench_networks.py; ``--no-memory-guard`` runs it anyway): the JSON line then has ``"skipped"``, null
timings, and the script exits with status 1.

Examples (from the repository root, with the virtualenv active)::

  python scripts/bench_train.py --config configs/ve/cifar10_ncsnpp_continuous.py --batch 8 --steps 5
  python scripts/bench_train.py --config configs/vp/cifar10_ddpmpp_continuous.py --batch 8 --steps 5 --bf16
  python scripts/bench_train.py --config configs/vp/cifar10_ddpmpp_continuous.py --batch 128 --steps 20 \\
      --config.training.n_jitted_steps=5
  python scripts/bench_train.py --shrink --batch 2 --steps 2 --config configs/vp/cifar10_ddpmpp_continuous.py

``scripts/bench_train_torch.py`` times the original PyTorch implementation's step the same way; numbers
are recorded in docs/benchmarks.md.
"""

# No `from __future__ import annotations`, as in the other bench scripts: tests load this file with importlib.
import argparse
import ast
import importlib.util
import json
import math
import pathlib
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_jax import builders, configs_loader, parallel, train, xla_cpu

_SCRIPTS = pathlib.Path(__file__).resolve().parent
CONFIG_PREFIX = "--config."  # command-line overrides: --config.<section>.<field>=<value>


def _load_sibling(name: str):
  """The module of ``scripts/<name>.py`` (the scripts are not a package)."""
  module_name = f"_bench_script_{name}"
  if module_name in sys.modules:
    return sys.modules[module_name]
  spec = importlib.util.spec_from_file_location(module_name, _SCRIPTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[module_name] = module
  spec.loader.exec_module(module)
  return module


# Shared with bench_networks.py: the --shrink overrides, the peak FLOP/s table and the XLA helpers.
bench_networks = _load_sibling("bench_networks")
SHRINK = bench_networks.SHRINK


# ---- config overrides ----------------------------------------------------------------------------------

def parse_overrides(tokens: Sequence[str]) -> list[tuple[str, str]]:
  """``['--config.a.b=v', '--config.c.d', 'w']`` -> ``[('a.b', 'v'), ('c.d', 'w')]``.

  Raises:
    ValueError: for a token that is not a ``--config.<dotted key>`` override or one without a value.
  """
  overrides, i = [], 0
  while i < len(tokens):
    token = tokens[i]
    if not token.startswith(CONFIG_PREFIX):
      raise ValueError(f"unrecognized argument {token!r}; config fields are set as --config.<section>.<field>=<value>")
    dotted, sep, value = token[len(CONFIG_PREFIX):].partition("=")
    if not sep:
      if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
        raise ValueError(f"{token!r} has no value; write {token}=<value>")
      value, i = tokens[i + 1], i + 1
    if not dotted or "" in dotted.split("."):
      raise ValueError(f"{token!r} names no config field; expected --config.<section>.<field>=<value>")
    overrides.append((dotted, value))
    i += 1
  return overrides


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def _coerce(text: str, old: Any, dotted: str) -> Any:
  """``text`` as a value of the type of the field's current value ``old``."""
  try:
    if isinstance(old, bool):
      if text.lower() not in _TRUE + _FALSE:
        raise ValueError("expected true or false")
      return text.lower() in _TRUE
    if isinstance(old, int):
      return int(text)
    if isinstance(old, float):
      return float(text)
    if isinstance(old, str):
      return text
    if isinstance(old, (tuple, list)):
      value = ast.literal_eval(text)
      if not isinstance(value, (tuple, list)):
        value = (value,)
      return type(old)(value)
  except (ValueError, SyntaxError) as e:
    raise ValueError(f"--config.{dotted}={text!r}: not a valid {type(old).__name__} (the field's type; it is "
                     f"{old!r} now): {e}") from None
  try:  # a None field or another type: a Python literal if it is one, else the string
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[tuple[str, str]]) -> None:
  """Set each ``(dotted key, text)`` field of ``config`` in place, as the type of its current value.

  Raises:
    ValueError: naming the key, for a key that is not an existing field of ``config`` or a value that
      does not parse as the field's type.
  """
  for dotted, text in overrides:
    *sections, field = dotted.split(".")
    node = config
    for depth, section in enumerate(sections):
      where = ".".join(sections[:depth])
      if section not in node or not isinstance(node[section], ml_collections.ConfigDict):
        known = sorted(k for k, v in node.items() if isinstance(v, ml_collections.ConfigDict))
        raise ValueError(f"unknown config key --config.{dotted}: {section!r} is not a section of "
                         f"config{'.' + where if where else ''} (sections: {', '.join(known)})")
      node = node[section]
    if field not in node:
      where = ".".join(sections)
      raise ValueError(f"unknown config key --config.{dotted}: config{'.' + where if where else ''} has no field "
                       f"{field!r} (fields: {', '.join(sorted(node.keys()))})")
    if isinstance(node[field], ml_collections.ConfigDict):
      raise ValueError(f"--config.{dotted} is a section, not a field; set its fields (--config.{dotted}.<field>)")
    node[field] = _coerce(text, node[field], dotted)


def shrink(config: ml_collections.ConfigDict) -> None:
  """Apply the --shrink overrides (:data:`SHRINK`, bench_networks.py's tiny network) in place."""
  apply_overrides(config, [(dotted, repr(value)) for dotted, value in SHRINK.items()])


# ---- command line --------------------------------------------------------------------------------------

_positive_int = bench_networks._positive_int


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="bench_train.py",
      usage="%(prog)s --config CONFIG --batch B --steps S [--bf16] [--shrink] [--config.<section>.<field>=<value> ...]",
      description=(
          "Time the steady-state training step of score_jax's training loop for one config at global batch B,\n"
          "on random images: train.make_train_step (loss, gradient, optax update, EMA), fused over\n"
          "training.n_jitted_steps and run on all devices present by parallel.make_parallel_train_step.\n"
          "Compiles ahead of time (timed apart), runs one warm-up call, then --steps timed calls. The last\n"
          "line printed is JSON: images_per_s, step_s (median, per optimizer step), compile_s, device,\n"
          "flops_per_step (XLA), mfu (GPUs in bench_networks.PEAK_FLOPS), n_params, batch, bf16, ..."),
      epilog=(
          "config overrides:\n"
          "  --config.<section>.<field>=<value> sets an existing field, parsed as the type of its current value,\n"
          "  e.g. --config.model.nf=64 --config.model.ch_mult='(1,2)' --config.training.parallel=pmap\n"
          "  --config.training.n_jitted_steps=5 (default here: 1). An unknown key is an error. The batch size\n"
          "  is set with --batch only.\n\n"
          "examples:\n"
          "  python scripts/bench_train.py --config configs/ve/cifar10_ncsnpp_continuous.py --batch 8 --steps 5\n"
          "  python scripts/bench_train.py --config configs/vp/cifar10_ddpmpp_continuous.py --batch 8 --steps 5 "
          "--bf16\n"
          "  python scripts/bench_train.py --shrink --batch 2 --steps 2 "
          "--config configs/vp/cifar10_ddpmpp_continuous.py"),
      formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
  parser.add_argument("--config", required=True, metavar="CONFIG",
                      help="config file, e.g. configs/ve/cifar10_ncsnpp_continuous.py")
  parser.add_argument("--batch", type=_positive_int, required=True, metavar="B",
                      help="global batch size (sets training.batch_size); must be divisible by the device count")
  parser.add_argument("--steps", type=_positive_int, required=True, metavar="S",
                      help="timed calls after one untimed warm-up; the median is reported")
  parser.add_argument("--bf16", action="store_true",
                      help="set training.bf16: bf16 compute with fp32 master weights (default: the config's value)")
  parser.add_argument("--shrink", action="store_true",
                      help=("tiny network of the same family, for smoke tests: "
                            + ", ".join(f"{k}={v}" for k, v in SHRINK.items())
                            + " (applied before the --config.* overrides)"))
  parser.add_argument("--seed", type=int, default=0, help="PRNG seed of parameters and inputs (default: %(default)s)")
  parser.add_argument("--no-memory-guard", action="store_true",
                      help="on CPU, run the step even if XLA's buffer estimate exceeds the available host memory")
  return parser


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
  """Parse ``argv`` and build the config to benchmark; every error (exit status 2) is raised here.

  Returns:
    ``(args, config)``: the config file's config with --shrink, the ``--config.*`` overrides, --bf16,
    ``training.batch_size = B`` and ``training.n_jitted_steps = 1`` unless overridden.
  """
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  try:
    overrides = parse_overrides(rest)
  except ValueError as e:
    parser.error(str(e))
  keys = {dotted for dotted, _ in overrides}
  if "training.batch_size" in keys:
    parser.error("set the batch size with --batch B, not --config.training.batch_size")
  try:
    config = configs_loader.load_config(args.config)
  except (FileNotFoundError, AttributeError) as e:
    parser.error(f"--config {args.config}: {e}")
  try:
    if args.shrink:
      shrink(config)
    apply_overrides(config, overrides)
  except ValueError as e:
    parser.error(str(e))
  if "n_jitted_steps" in config.training and "training.n_jitted_steps" not in keys:
    config.training.n_jitted_steps = 1
  if config.training.get("n_jitted_steps", 1) < 1:
    parser.error(f"training.n_jitted_steps must be >= 1, got {config.training.n_jitted_steps}")
  if args.bf16:
    config.training.bf16 = True
  config.training.batch_size = args.batch
  mode = config.training.get("parallel", "jit")
  if mode not in parallel.MODES:
    parser.error(f"training.parallel={mode!r}: expected one of {list(parallel.MODES)}")
  n_devices = jax.device_count()
  if args.batch % n_devices:
    parser.error(f"--batch {args.batch} is not divisible by the number of devices {n_devices} "
                 f"({jax.default_backend()}); use a multiple of {n_devices}")
  try:
    builders.validate(config)
  except (ValueError, KeyError, AttributeError) as e:
    parser.error(f"the config does not build: {e}")
  return args, config


# ---- measuring -----------------------------------------------------------------------------------------

def _compiled_core(pstep: Callable) -> Any:
  """The ``jax.jit`` / ``jax.pmap`` function inside ``parallel.make_parallel_train_step``'s wrapper.

  The wrapper only lays out the batch (``shard_batch``) and calls that function; taking it from the
  wrapper's closure lets the benchmark compile exactly what training runs, ahead of time.
  """
  for cell in pstep.__closure__ or ():
    try:
      fn = cell.cell_contents
    except ValueError:  # an empty cell
      continue
    if callable(fn) and hasattr(fn, "lower"):
      return fn
  raise RuntimeError("parallel.make_parallel_train_step no longer wraps a jax.jit / jax.pmap function in a "
                     "closure; update _compiled_core in scripts/bench_train.py")


def _flops_per_device_step(core, compiled, state, xs, key: jax.Array, n_jitted: int, mode: str) -> float | None:
  """XLA's FLOPs of one optimizer step on one device (B / n_devices images), or None if XLA gives none.

  XLA's cost analysis is of one device's program. With ``n_jitted_steps = 1`` the compiled call is one step.
  With more, the call is a ``lax.scan`` that may stay a loop, whose body the analysis counts once, or be
  unrolled (``train.make_fused_train_step`` unrolls on CPU), so its count is ambiguous; the program of one
  step is then lowered (not compiled) and its pre-optimisation HLO is counted instead.
  """
  if n_jitted == 1:
    return bench_networks._flops(compiled)
  if mode == "pmap":
    one = xs[:, :1]  # [devices, 1, B / devices, H, W, C]
  else:
    one = jax.ShapeDtypeStruct((1,) + xs.shape[1:], xs.dtype, sharding=xs.sharding)  # [1, B, H, W, C]
  return bench_networks._flops(core.lower(state, one, key))


def _random_images(key: jax.Array, config: ml_collections.ConfigDict, n: int, batch: int) -> np.ndarray:
  """Random images ``[n, B, H, W, C]`` float32, scaled like data: uniform in [-1, 1] if centered, else [0, 1]."""
  d = config.data
  x = jax.random.uniform(key, (n, batch, d.image_size, d.image_size, d.num_channels))
  return np.asarray(2.0 * x - 1.0 if d.centered else x, np.float32)


def _mfu(flops_per_s: float | None, device, bf16: bool) -> dict | None:
  """One device's achieved / peak FLOP/s on a GPU of ``bench_networks.PEAK_FLOPS`` ({peak: fraction}), else None."""
  if device.platform != "gpu" or not flops_per_s:
    return None
  peaks = bench_networks._peak_flops(device.device_kind)
  if peaks is None:
    return None
  names = ("bf16",) if bf16 else ("tf32", "fp32")
  return {name: flops_per_s / peaks[name] for name in names}


def bench(args: argparse.Namespace, config: ml_collections.ConfigDict) -> dict:
  """Build, compile and time the parallel training step of ``config``; the result dict (the JSON line)."""
  device = jax.devices()[0]
  n_devices, n_jitted = jax.device_count(), config.training.get("n_jitted_steps", 1)
  mode = config.training.get("parallel", "jit")
  model, sde = builders.build_model(config), builders.build_sde(config)
  optimizer = builders.build_optimizer(config)
  key_init, key_data, key_train = jax.random.split(jax.random.PRNGKey(args.seed), 3)
  state = train.init_train_state(key_init, config, model, optimizer)
  # A fresh state's EMA is the very same arrays as its params, and a donated call may not take one buffer
  # twice ("Attempt to donate the same buffer twice"): give the EMA its own copy.
  state = state.replace(ema_params=jax.tree_util.tree_map(jnp.copy, state.params))
  n_params = sum(int(leaf.size) for leaf in jax.tree_util.tree_leaves(state.params))
  step_fn = train.make_train_step(config, model, sde, optimizer,
                                  axis_name=parallel.AXIS_NAME if mode == "pmap" else None)
  core = _compiled_core(parallel.make_parallel_train_step(config, step_fn, mode))
  state = parallel.replicate(state, mode)
  xs = parallel.shard_batch(_random_images(key_data, config, n_jitted, args.batch), mode)  # [n, B, H, W, C]
  print(f"jax {jax.__version__} | backend {jax.default_backend()} | {n_devices} x {device.platform}:"
        f"{device.device_kind} | parallel {mode} | config {args.config} | {type(model).__name__} "
        f"{n_params:,} params{' (shrunk)' if args.shrink else ''} | {type(sde).__name__} | batch {args.batch} | "
        f"n_jitted_steps {n_jitted} | {'bf16' if config.training.get('bf16', False) else 'float32'}", flush=True)

  start = time.perf_counter()
  compiled = core.lower(state, xs, key_train).compile()
  compile_s = time.perf_counter() - start
  flops_per_device = _flops_per_device_step(core, compiled, state, xs, key_train, n_jitted, mode)
  flops_per_step = flops_per_device * n_devices if flops_per_device else None
  bf16 = bool(config.training.get("bf16", False))
  result = dict(images_per_s=None, step_s=None, compile_s=compile_s, device=f"{device.platform}:{device.device_kind}",
                n_devices=n_devices, config=args.config, batch=args.batch, bf16=bf16,
                n_jitted_steps=n_jitted, parallel=mode, n_params=n_params, flops_per_step=flops_per_step,
                xla_buffer_bytes=bench_networks._xla_buffer_bytes(compiled), shrink=args.shrink, jax=jax.__version__)
  print(f"compiled in {compile_s:.1f} s | XLA flops/step "
        f"{'n/a' if flops_per_step is None else f'{flops_per_step:.3e}'} | XLA buffers "
        f"{bench_networks._mib(result['xla_buffer_bytes'])}", flush=True)
  skipped = None if args.no_memory_guard else bench_networks._too_big_for_host(compiled, device)
  if skipped:
    result["skipped"] = skipped
    print(skipped, flush=True)
    return result

  start = time.perf_counter()
  state, metrics = compiled(state, xs, key_train)  # warm-up
  jax.block_until_ready((state, metrics))
  warmup_s = time.perf_counter() - start
  print(f"warm-up call {warmup_s:.2f} s", flush=True)
  times = []
  for i in range(args.steps):
    start = time.perf_counter()
    state, metrics = compiled(state, xs, key_train)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / n_jitted)
    print(f"  call {i + 1}/{args.steps}: {times[-1]:.4f} s per step", flush=True)
  loss = float(np.asarray(metrics["loss"]).reshape(-1)[-1])
  if not math.isfinite(loss):
    raise RuntimeError(f"the training step produced a non-finite loss {loss}")
  step_s = statistics.median(times)
  flops_per_s = flops_per_step / step_s if flops_per_step else None
  mfu = _mfu(flops_per_device / step_s if flops_per_device else None, device, bf16)
  result.update(images_per_s=args.batch / step_s, step_s=step_s, min_step_s=min(times), times_s=times,
                warmup_s=warmup_s, loss=loss, flops_per_s=flops_per_s, mfu=mfu)
  print(f"{args.batch / step_s:.3f} images/s | step {step_s:.4f} s median, {min(times):.4f} s min over "
        f"{len(times)} (warm-up {warmup_s:.2f} s) | loss {loss:.4g}"
        + (f" | {flops_per_s / 1e12:.3f} TFLOP/s" if flops_per_s else "")
        + (" | MFU " + ", ".join(f"{v:.1%} of {k} peak" for k, v in result["mfu"].items()) if result["mfu"] else ""),
        flush=True)
  return result


def main(argv: Sequence[str] | None = None) -> dict:
  """Run the benchmark for ``argv`` (``sys.argv[1:]`` if None); print the JSON line last and return its dict."""
  xla_cpu.apply()  # score_jax's CPU default, before JAX's first computation (importing score_jax sets nothing)
  args, config = parse_args(argv)
  result = bench(args, config)
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  sys.exit(1 if "skipped" in main(sys.argv[1:]) else 0)
