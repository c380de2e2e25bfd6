"""Benchmark the full-size CIFAR-10 score networks: forward pass and one training step.

For NCSN++ cont. (VE) (``configs/ve/cifar10_ncsnpp_continuous.py``) and DDPM++ cont. (VP)
(``configs/vp/cifar10_ddpmpp_continuous.py``), built exactly as training builds them
(``builders.build_model`` / ``build_sde`` / ``build_optimizer``), at each batch size this prints

  (a) the forward pass, ``model.apply(variables, x, labels, train=False)`` jitted: compile time, then images/s
      from the median of ``--repeats`` timed runs (``block_until_ready``) after one untimed warm-up;
  (b) one training step, jitted: the continuous DSM loss (``losses.make_loss_fn('dsm', ...)`` with the
      config's ``reduce_mean`` / ``likelihood_weighting`` / ``eps``) of ``models.get_score_fn(sde, model,
      {'params': params}, train=True)``, its gradient and the optax update of ``builders.build_optimizer``
      (Adam, warm-up, gradient clipping), params and optimizer state donated; compile time and images/s;
  (c) memory: on GPU ``device.memory_stats()['peak_bytes_in_use']``; on other backends the process's maximum
      resident set size (``resource.getrusage``, RSS, which includes Python, XLA and the compiler). Both
      are peaks over the process so far, so they only grow from one row to the next. XLA's own estimate of
      the buffers of the compiled step (arguments + outputs + temporaries - aliased) is printed too;
  (d) FLOPs of one call from XLA's ``cost_analysis()`` of the compiled function and the achieved FLOP/s;
      on GPU also the model FLOPs utilisation against the device's peak dense FLOP/s (:data:`PEAK_FLOPS`,
      'n/a' for a device not in the table).

On a CPU backend a compiled call whose XLA buffers exceed the host's available memory (MemAvailable) is
reported as not run, with its compile time and buffer size, rather than risking the OOM killer.

The header line gives the jax version, backend, device kind, CPU count and each model's parameter count,
checked against the published sizes (62,758,915 for NCSN++ cont. VE, 61,804,419 for DDPM++ cont. VP).

Dropout in the training step: the networks' dropout (``model.dropout = 0.1``) needs a 'dropout' rng in train
mode; the step passes one as ``get_score_fn(..., train=True, rng=key)``, so the score convention (VE: label
sigma(t), output is the score; VP: label 999 t, score = -output / std(t)) is get_score_fn's own.

Examples (from the repository root, with the virtualenv active)::

  python scripts/bench_networks.py --quick
  python scripts/bench_networks.py --models ncsnpp,ddpmpp --batch-sizes 8,128 --repeats 5
  python scripts/bench_networks.py --models ddpmpp --batch-sizes 128 --repeats 1
  python scripts/bench_networks.py --shrink --quick      # tiny networks (16x16, nf 16): a smoke test

Numbers measured with this script are recorded in docs/benchmarks.md.
"""

# No `from __future__ import annotations`, as in bench_sampling.py: tests load this file with importlib.
import argparse
import os
import pathlib
import platform
import resource
import statistics
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from score_jax import builders, configs_loader, losses, models, sde_lib, xla_cpu

Array = jax.Array

_ROOT = pathlib.Path(__file__).resolve().parents[1]
# --models name -> (config file, the paper's name, its published parameter count)
MODELS = {
    "ncsnpp": ("configs/ve/cifar10_ncsnpp_continuous.py", "NCSN++ cont. (VE)", 62_758_915),
    "ddpmpp": ("configs/vp/cifar10_ddpmpp_continuous.py", "DDPM++ cont. (VP)", 61_804_419),
}
# --shrink: a tiny network of the same family and wiring, for smoke tests (parameter count not checked).
SHRINK = {"data.image_size": 16, "model.nf": 16, "model.ch_mult": (1, 2, 2), "model.num_res_blocks": 1,
          "model.attn_resolutions": (8,)}
# --quick: a smoke run, overriding --batch-sizes and --repeats.
QUICK = dict(batch_sizes=(8,), repeats=2)
DTYPES = ("float32",)  # bfloat16 (mixed precision) is not implemented

# Peak dense (no sparsity) FLOP/s from NVIDIA's datasheets, by dtype: 'tf32' is the tensor-core rate that
# float32 matmuls and convolutions may use on GPU at JAX's default precision, 'fp32' the CUDA-core rate.
# Keys are matched against jax's device_kind by _peak_flops; a device not listed gets 'n/a'.
PEAK_FLOPS = {
    "H100 SXM": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100 PCIe": {"bf16": 756.0e12, "tf32": 378.0e12, "fp32": 51.2e12},
    "H200 SXM": {"bf16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "A100": {"bf16": 312.0e12, "tf32": 156.0e12, "fp32": 19.5e12},  # SXM and PCIe, 40 and 80 GB
}
_PEAK_KEYS_FOR_DTYPE = {"float32": ("tf32", "fp32")}


def _peak_flops(device_kind: str) -> dict | None:
  """The :data:`PEAK_FLOPS` row of ``device_kind`` (e.g. 'NVIDIA H100 80GB HBM3'), or None if unknown."""
  kind = device_kind.upper()
  if "NVL" in kind:  # the NVL variants have lower clocks; not in the table
    return None
  if "A100" in kind:
    return PEAK_FLOPS["A100"]
  if "H100" in kind:
    return PEAK_FLOPS["H100 PCIe" if "PCIE" in kind else "H100 SXM"]
  if "H200" in kind:
    return PEAK_FLOPS["H200 SXM"]
  return None


# ---- building ------------------------------------------------------------------------------------------

def load_model_config(name: str, shrink: bool) -> ml_collections.ConfigDict:
  """The config of ``--models`` entry ``name``, with the :data:`SHRINK` overrides if ``shrink``."""
  config = configs_loader.load_config(_ROOT / MODELS[name][0])
  if shrink:
    for dotted, value in SHRINK.items():
      section, field = dotted.split(".")
      if field not in config[section]:
        raise KeyError(f"--shrink override {dotted!r} names no field of {MODELS[name][0]}.")
      config[section][field] = value
  return config


def _example_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  d = config.data
  return (d.image_size, d.image_size, d.num_channels)  # [H, W, C]


def _labels(sde: sde_lib.SDE, t: Array) -> Array:
  """The network's labels at times ``t [B]``, as ``models.get_score_fn`` makes them for continuous training."""
  if isinstance(sde, sde_lib.VESDE):
    return sde.marginal_prob(jnp.zeros_like(t), t)[1]  # sigma(t)
  return t * models.VP_CONTINUOUS_LABEL_SCALE


def count_params(model, config: ml_collections.ConfigDict) -> int:
  """Number of parameters of ``model`` (shapes from ``jax.eval_shape``, nothing is computed)."""
  x = jax.ShapeDtypeStruct((1,) + _example_shape(config), jnp.float32)
  labels = jax.ShapeDtypeStruct((1,), jnp.float32)
  variables = jax.eval_shape(lambda x, labels: model.init(jax.random.PRNGKey(0), x, labels, train=False),
                             x, labels)
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def make_train_step(model, sde: sde_lib.SDE, config: ml_collections.ConfigDict,
                    optimizer: optax.GradientTransformation, accumulate: int = 1) -> Callable:
  """``step(params, opt_state, key, step, x [B, H, W, C]) -> (params, opt_state, loss)``: DSM loss, grad, Adam.

  The randomness of step ``step`` is ``fold_in(key, step)``, split into the loss's (t, z) and dropout's.
  With ``accumulate = K`` the batch is split into K equal micro-batches whose gradients are averaged in a
  ``lax.scan`` before the single Adam update: the same update for a batch that does not fit in memory at
  once (each micro-batch draws its own t, z and dropout from ``fold_in(., k)``).
  """
  t = config.training
  loss_fn = losses.make_loss_fn("dsm", sde, reduce_mean=t.reduce_mean, likelihood_weighting=t.likelihood_weighting,
                                eps=t.eps)

  def step_fn(params, opt_state, key, step, x):
    key_loss, key_dropout = jax.random.split(jax.random.fold_in(key, step))

    def objective(params):
      score_fn = models.get_score_fn(sde, model, {"params": params}, train=True, continuous=True, rng=key_dropout)
      return loss_fn(key_loss, score_fn, x)

    if accumulate == 1:
      loss, grads = jax.value_and_grad(objective)(params)
    else:
      micro = x.reshape((accumulate, x.shape[0] // accumulate) + x.shape[1:])

      def micro_step(total, inputs):
        k, xk = inputs

        def micro_objective(params):
          score_fn = models.get_score_fn(sde, model, {"params": params}, train=True, continuous=True,
                                         rng=jax.random.fold_in(key_dropout, k))
          return loss_fn(jax.random.fold_in(key_loss, k), score_fn, xk)

        value, grads = jax.value_and_grad(micro_objective)(params)
        return jax.tree_util.tree_map(jnp.add, total, (value, grads)), None

      zeros = (jnp.zeros(()), jax.tree_util.tree_map(jnp.zeros_like, params))
      (loss, grads), _ = jax.lax.scan(micro_step, zeros, (jnp.arange(accumulate), micro))
      loss, grads = jax.tree_util.tree_map(lambda v: v / accumulate, (loss, grads))
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step_fn


# ---- measuring -----------------------------------------------------------------------------------------

def _median_time(call: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
  """Median wall time (s) of ``repeats`` calls of ``call`` (blocking on its result), and all the times."""
  for _ in range(warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def _compile(jitted, *args) -> tuple[object, float]:
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _flops(compiled) -> float | None:
  """FLOPs of one call of ``compiled`` from XLA's cost analysis, or None where the backend gives none."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # some backends do not implement it
    return None
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _xla_buffer_bytes(compiled) -> int | None:
  """Arguments + outputs + temporaries - aliased (donated) bytes of ``compiled``, XLA's static estimate."""
  try:
    m = compiled.memory_analysis()
  except Exception:
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _available_host_bytes() -> int | None:
  """``MemAvailable`` of /proc/meminfo in bytes, or None where there is none (not Linux)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def _too_big_for_host(compiled, device) -> str | None:
  """Why ``compiled`` must not run here, or None: on CPU its XLA buffers exceed the available host memory.

  Running it anyway would invite the kernel's OOM killer onto this or a neighbouring process; a GPU
  reports its own out-of-memory error instead.
  """
  if device.platform != "cpu":
    return None
  need, available = _xla_buffer_bytes(compiled), _available_host_bytes()
  if need is None or available is None or need < available:
    return None
  return f"not run: XLA buffers {_mib(need)} exceed the available host memory {_mib(available)}"


def _peak_memory(device) -> tuple[int | None, str]:
  """(bytes, what they are): the device's peak bytes in use on GPU, else the process's max RSS."""
  if device.platform == "gpu":
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      return int(stats["peak_bytes_in_use"]), "GPU peak_bytes_in_use"
    return None, "GPU peak_bytes_in_use (not reported)"
  # ru_maxrss is in KiB on Linux, in bytes on macOS.
  scale = 1 if sys.platform == "darwin" else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process max RSS"


def _utilisation(flops: float | None, seconds: float, device, dtype: str) -> dict:
  """Achieved FLOP/s and, on a GPU in :data:`PEAK_FLOPS`, the fraction of each peak for ``dtype``."""
  out = dict(flops=flops, flops_per_s=flops / seconds if flops else None, mfu={})
  if device.platform == "gpu":
    peaks = _peak_flops(device.device_kind)
    for key in _PEAK_KEYS_FOR_DTYPE[dtype]:
      out["mfu"][key] = out["flops_per_s"] / peaks[key] if peaks and flops else None
  return out


def bench_forward(model, variables, x: Array, labels: Array, *, repeats: int, device, dtype: str) -> dict:
  """(a) ``model.apply(variables, x, labels, train=False)`` jitted."""
  fn = jax.jit(lambda variables, x, labels: model.apply(variables, x, labels, train=False))
  compiled, compile_s = _compile(fn, variables, x, labels)
  skipped = _too_big_for_host(compiled, device)
  if skipped:
    return dict(compile_s=compile_s, skipped=skipped, xla_buffer_bytes=_xla_buffer_bytes(compiled),
                flops=_flops(compiled))
  wall, times = _median_time(lambda: compiled(variables, x, labels), repeats)
  peak, peak_kind = _peak_memory(device)
  return dict(compile_s=compile_s, wall_s=wall, times_s=times, images_per_s=x.shape[0] / wall,
              peak_bytes=peak, peak_kind=peak_kind, xla_buffer_bytes=_xla_buffer_bytes(compiled),
              **_utilisation(_flops(compiled), wall, device, dtype))


def bench_train(step_fn, params, optimizer, x: Array, key: Array, *, repeats: int, device, dtype: str) -> dict:
  """(b) one jitted training step; params and optimizer state are donated and threaded through the calls."""
  jitted = jax.jit(step_fn, donate_argnums=(0, 1))
  opt_state = optimizer.init(params)
  step = jnp.zeros((), jnp.int32)
  compiled, compile_s = _compile(jitted, params, opt_state, key, step, x)
  flops, buffer_bytes = _flops(compiled), _xla_buffer_bytes(compiled)
  skipped = _too_big_for_host(compiled, device)
  if skipped:
    return dict(compile_s=compile_s, skipped=skipped, xla_buffer_bytes=buffer_bytes, flops=flops)
  state = dict(params=params, opt_state=opt_state, step=0, loss=None)

  def call():
    state["params"], state["opt_state"], state["loss"] = compiled(
        state["params"], state["opt_state"], key, jnp.asarray(state["step"], jnp.int32), x)
    state["step"] += 1
    return state["loss"]

  wall, times = _median_time(call, repeats)
  peak, peak_kind = _peak_memory(device)
  loss = float(state["loss"])
  if not jnp.isfinite(loss):
    raise RuntimeError(f"the training step produced a non-finite loss {loss}")
  return dict(compile_s=compile_s, wall_s=wall, times_s=times, images_per_s=x.shape[0] / wall, loss=loss,
              peak_bytes=peak, peak_kind=peak_kind, xla_buffer_bytes=buffer_bytes,
              **_utilisation(flops, wall, device, dtype))


# ---- command line --------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def _batch_sizes(text: str) -> tuple[int, ...]:
  try:
    sizes = tuple(int(s) for s in text.split(","))
  except ValueError:
    sizes = ()
  if not sizes or any(s < 1 for s in sizes):
    raise argparse.ArgumentTypeError(f"expected comma-separated positive batch sizes such as '8,128', got {text!r}")
  return sizes


def _model_names(text: str) -> tuple[str, ...]:
  names = tuple(s.strip() for s in text.split(",") if s.strip())
  unknown = [n for n in names if n not in MODELS]
  if not names or unknown:
    raise argparse.ArgumentTypeError(f"unknown model(s) {unknown or text!r}; expected a comma-separated subset "
                                     f"of {','.join(MODELS)}")
  return names


def build_parser() -> argparse.ArgumentParser:
  models_help = "; ".join(f"{name}: {paper}, {path}" for name, (path, paper, _) in MODELS.items())
  parser = argparse.ArgumentParser(
      prog="bench_networks.py",
      description=("Time the full-size CIFAR-10 NCSN++ (VE) and DDPM++ (VP) continuous score networks on the "
                   "JAX device present: the jitted forward pass and one jitted training step (continuous DSM "
                   "loss + gradient + Adam update), each with its compile time apart, in images/s (median of "
                   "--repeats timed runs after one warm-up); peak memory (GPU: peak_bytes_in_use; CPU: "
                   "process max RSS); XLA's FLOP count and, on a known GPU, the model FLOPs utilisation."),
      epilog=("examples:\n"
              "  python scripts/bench_networks.py --quick\n"
              "  python scripts/bench_networks.py --models ncsnpp,ddpmpp --batch-sizes 8,128 --repeats 5\n"
              "  python scripts/bench_networks.py --models ddpmpp --batch-sizes 128 --repeats 1\n"
              "  python scripts/bench_networks.py --shrink --quick"),
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", type=_model_names, default=tuple(MODELS),
                      help=f"comma-separated networks to time ({models_help}) (default: {','.join(MODELS)})")
  parser.add_argument("--batch-sizes", type=_batch_sizes, default=(8, 128),
                      help="comma-separated batch sizes (default: 8,128)")
  parser.add_argument("--repeats", type=_positive_int, default=5,
                      help="timed runs per measurement after one warm-up; the median is reported "
                           "(default: %(default)s)")
  parser.add_argument("--skip-train", action="store_true", help="time the forward pass only")
  parser.add_argument("--accumulate", type=_positive_int, default=1,
                      help="split each training batch into this many micro-batches and average their gradients "
                           "before one Adam update (for batches that do not fit in memory; default: %(default)s)")
  parser.add_argument("--dtype", choices=DTYPES, default="float32",
                      help="parameter and activation dtype; only float32 is implemented (default: %(default)s)")
  parser.add_argument("--shrink", action="store_true",
                      help=("tiny networks of the same families for smoke tests: "
                            + ", ".join(f"{k}={v}" for k, v in SHRINK.items())
                            + " (the parameter-count check is skipped)"))
  parser.add_argument("--seed", type=int, default=0, help="PRNG seed of parameters and inputs (default: %(default)s)")
  parser.add_argument("--quick", action="store_true",
                      help="smoke run: batch size {0}, repeats {1}, overriding those options".format(
                          ",".join(map(str, QUICK["batch_sizes"])), QUICK["repeats"]))
  return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  """Parse ``argv``; every error is raised here, before any compilation."""
  args = build_parser().parse_args(argv)
  if args.quick:
    for name, value in QUICK.items():
      setattr(args, name, value)
  bad = [b for b in args.batch_sizes if b % args.accumulate]
  if bad:
    build_parser().error(f"--accumulate {args.accumulate} must divide every batch size; {bad} do not")
  return args


def _environment_line(device) -> str:
  try:
    usable = len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    usable = os.cpu_count()
  return (f"jax {jax.__version__} | backend {jax.default_backend()} | device {device.platform}:"
          f"{device.device_kind} ({len(jax.devices())} present, timing the first) | cpu_count {os.cpu_count()} "
          f"(usable {usable}) | python {platform.python_version()}")


def _mib(n: int | None) -> str:
  return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def _rate(result: dict) -> str:
  flops = result["flops"]
  text = f"XLA flops/call {flops:.3e}, {result['flops_per_s'] / 1e12:.3f} TFLOP/s" if flops else "XLA flops n/a"
  if result["mfu"]:
    text += ", MFU " + ", ".join(f"{v:.1%} of {k} peak" if v is not None else f"n/a ({k})"
                                 for k, v in result["mfu"].items())
  return text


def _report(label: str, r: dict) -> str:
  if "skipped" in r:
    flops = f"XLA flops/call {r['flops']:.3e}" if r["flops"] else "XLA flops n/a"
    return f"  {label}: {r['skipped']} (compile {r['compile_s']:.1f} s) | {flops}"
  return (f"  {label}: {r['images_per_s']:9.2f} images/s  (median {1e3 * r['wall_s']:.1f} ms, min "
          f"{1e3 * min(r['times_s']):.1f} ms over {len(r['times_s'])}; compile {r['compile_s']:.1f} s) | "
          f"{r['peak_kind']} so far {_mib(r['peak_bytes'])}, XLA buffers {_mib(r['xla_buffer_bytes'])} | "
          f"{_rate(r)}")


def main(argv: Sequence[str] | None = None) -> dict:
  """Run the benchmark for command-line ``argv`` (``sys.argv[1:]`` if None); print and return the results.

  Returns:
    ``dict(args, environment, params={name: count}, results={name: {batch: {'forward': {...}, 'train':
    {...}}}})``; each measurement has ``images_per_s``, ``wall_s``, ``times_s``, ``compile_s``,
    ``peak_bytes``, ``peak_kind``, ``xla_buffer_bytes``, ``flops``, ``flops_per_s`` and ``mfu`` (train also
    ``loss``); one that was compiled but not run has ``skipped`` (the reason), ``compile_s``,
    ``xla_buffer_bytes`` and ``flops`` only.
  """
  xla_cpu.apply()  # score_jax's CPU default, before JAX's first computation (importing score_jax sets nothing)
  args = parse_args(argv)
  device = jax.devices()[0]
  built = {}
  for name in args.models:  # build and count everything before the long work starts
    config = load_model_config(name, args.shrink)
    model = builders.build_model(config)
    built[name] = (config, model, builders.build_sde(config), builders.build_optimizer(config))
  counts = {name: count_params(b[1], b[0]) for name, b in built.items()}

  def count_text(name):
    expected = MODELS[name][2]
    check = "shrunk" if args.shrink else ("ok" if counts[name] == expected else f"EXPECTED {expected:,}")
    return f"{name} ({MODELS[name][1]}) {counts[name]:,} params [{check}]"

  environment = _environment_line(device)
  print(f"{environment} | {' | '.join(count_text(n) for n in args.models)}", flush=True)
  print(f"settings: batch sizes {','.join(map(str, args.batch_sizes))} | repeats {args.repeats} (median, after "
        f"1 warm-up) | dtype {args.dtype} | {'forward only' if args.skip_train else 'forward + train step'}"
        + (f" | gradients accumulated over {args.accumulate} micro-batches" if args.accumulate > 1 else "")
        + (" | SHRUNK networks" if args.shrink else ""), flush=True)
  results = dict(args=vars(args), environment=environment, params=counts, results={})

  key = jax.random.PRNGKey(args.seed)
  for i, name in enumerate(args.models):
    config, model, sde, optimizer = built[name]
    key_init, key_data, key_train = jax.random.split(jax.random.fold_in(key, i), 3)
    shape = _example_shape(config)
    init = jax.jit(lambda k, m=model, s=shape: m.init(k, jnp.zeros((1,) + s), jnp.ones((1,)), train=False))
    variables = init(key_init)
    t = config.training
    print(f"{name}: {MODELS[name][1]}, {MODELS[name][0]} | sde {type(sde).__name__} | image {shape} | loss dsm, "
          f"reduce_mean {t.reduce_mean}, likelihood_weighting {t.likelihood_weighting} | dropout "
          f"{config.model.dropout}", flush=True)
    step_fn = make_train_step(model, sde, config, optimizer, accumulate=args.accumulate)
    results["results"][name] = {}
    for batch in args.batch_sizes:
      key_x, key_t = jax.random.split(jax.random.fold_in(key_data, batch))
      x = jax.random.normal(key_x, (batch,) + shape, jnp.float32)  # [B, H, W, C]
      labels = _labels(sde, jax.random.uniform(key_t, (batch,), minval=t.eps, maxval=sde.T))  # [B]
      row = results["results"][name][batch] = {}
      row["forward"] = bench_forward(model, variables, x, labels, repeats=args.repeats, device=device,
                                     dtype=args.dtype)
      print(_report(f"B={batch:4d} forward", row["forward"]), flush=True)
      if not args.skip_train:
        # The step donates its params; give it a copy so that `variables` stays valid for the next batch.
        params = jax.tree.map(jnp.copy, variables["params"])
        row["train"] = bench_train(step_fn, params, optimizer, x, key_train, repeats=args.repeats,
                                   device=device, dtype=args.dtype)
        loss = f" | loss {row['train']['loss']:.4g}" if "loss" in row["train"] else ""
        print(_report(f"B={batch:4d} train  ", row["train"]) + loss, flush=True)
  return results


if __name__ == "__main__":
  main(sys.argv[1:])
