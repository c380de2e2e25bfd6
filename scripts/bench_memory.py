"""XLA's compiled memory analysis of a config's train step, sampler and Inception feature step.

  python scripts/bench_memory.py --config CONFIG --batch B [--devices N] [--remat POLICY] [--grad_accum K]
      [--config.x=y ...]

Nothing is run and no dataset is read: each function is lowered on abstract arrays (``jax.ShapeDtypeStruct``)
and compiled (``jax.jit(...).lower(...).compile()``), and XLA's ``memory_analysis()`` (argument, output,
temporary and aliased bytes of one device's program) and ``cost_analysis()`` (FLOPs) are printed. The
functions are the ones training and evaluation run:

- train step: ``train.make_train_step`` (loss, gradient, optax update, EMA; ``training.grad_accum_steps``)
  fused over ``training.n_jitted_steps`` (1 here unless ``--config.training.n_jitted_steps`` says otherwise)
  by ``parallel.make_parallel_train_step`` ('jit' over a mesh of all devices: replicated state, donated,
  the global batch B sharded on its batch axis): the function that training compiles.
- sampler: ``builders.build_sampler`` (``sampling.method``, the whole ``lax.scan`` over the time steps) on
  ``--sample_batch`` samples (default B), sharded over the mesh as ``run_lib.make_sample_fn`` does.
- Inception: the FID Inception-v3 ``pool3`` features (``inception.apply``) of ``--inception_batch`` images of
  the config's size (default B), sharded the same way; skipped for images without 3 channels.

``--devices N`` simulates N CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``, set before
JAX starts; the CPU backend is then used). Figures are per device; "in all" is N times that.
``bytes_per_device = argument + output + temp - alias`` (XLA's static estimate of the buffers live during
the call). On a GPU (without --devices) the train step is also run once on random data and the device's
``peak_bytes_in_use`` is reported, to calibrate the static figure.

The last line printed is one JSON object (of the train step)::

  {"bytes_per_device": ..., "temp_bytes": ..., "argument_bytes": ..., "output_bytes": ..., "alias_bytes": ...,
   "flops": ..., "device": ..., ...}

``flops`` is XLA's count for one device's compiled train call (all ``n_jitted_steps`` steps on the CPU,
where the fused steps are unrolled; XLA counts a rolled loop's body, e.g. the micro-batch loop of
``--grad_accum``, once). Examples::

  python scripts/bench_memory.py --config configs/ve/cifar10_ncsnpp_continuous.py --batch 128 --devices 4 \\
      --remat best
  python scripts/bench_memory.py --config configs/ve/ffhq_256_ncsnpp_continuous.py --batch 8 --remat block
  python scripts/bench_memory.py --config configs/vp/cifar10_ddpmpp_continuous.py --batch 128 --grad_accum 8
  python scripts/bench_memory.py --shrink --config configs/ve/cifar10_ncsnpp_continuous.py --batch 4 --devices 2
"""

# No `from __future__ import annotations`, as in the other bench scripts: tests load this file with importlib.
import argparse
import importlib.util
import json
import os
import pathlib
import sys
import time
from typing import Sequence

_SCRIPTS = pathlib.Path(__file__).resolve().parent
# --remat best: 'block' saves nothing inside a block, the least memory by construction, at 1.19x the FLOPs of
# NCSN++'s step; XLA's CPU analysis shows no lower peak for NCSN++ with it (docs/benchmarks.md, "Memory"),
# where --grad_accum is what lowers memory.
BEST_REMAT = "block"
PARTS = ("train", "sampler", "inception")


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def _parts(text: str) -> tuple:
  parts = tuple(p for p in text.split(",") if p)
  bad = [p for p in parts if p not in PARTS]
  if bad or not parts:
    raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(PARTS)}, got {text!r}")
  return parts


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="bench_memory.py",
      usage=("%(prog)s --config CONFIG --batch B [--devices N] [--remat POLICY] [--grad_accum K] "
             "[--config.<section>.<field>=<value> ...]"),
      description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter,
      allow_abbrev=False)
  parser.add_argument("--config", required=True, metavar="CONFIG", help="config file")
  parser.add_argument("--batch", type=_positive_int, required=True, metavar="B",
                      help="global train batch (training.batch_size), split over the devices")
  parser.add_argument("--devices", type=_positive_int, default=None, metavar="N",
                      help="simulate N CPU devices (default: the devices present)")
  parser.add_argument("--remat", default=None, metavar="POLICY",
                      help=f"model.remat: none, block, block_save_convs, or best (= {BEST_REMAT}); default: the "
                           "config's")
  parser.add_argument("--grad_accum", type=_positive_int, default=None, metavar="K",
                      help="training.grad_accum_steps (default: the config's)")
  parser.add_argument("--sample_batch", type=_positive_int, default=None, help="sampler batch (default: B)")
  parser.add_argument("--inception_batch", type=_positive_int, default=None, help="Inception batch (default: B)")
  parser.add_argument("--parts", type=_parts, default=PARTS, help=f"what to compile (default: {','.join(PARTS)})")
  parser.add_argument("--scan", choices=("auto", "rolled", "unrolled"), default="auto",
                      help="the n_jitted_steps loop: auto (unrolled on the CPU, rolled elsewhere, as training) or "
                           "forced; 'rolled' gives the GPU/TPU program's memory on the CPU backend")
  parser.add_argument("--shrink", action="store_true", help="tiny network of the same family (bench_train.py's)")
  return parser


def _set_devices(argv: Sequence[str]) -> None:
  """``--devices N``: N simulated CPU devices, which XLA reads when JAX starts (so before importing it)."""
  args, _ = build_parser().parse_known_args(argv)
  if args.devices is None:
    return
  if "jax" in sys.modules:
    raise RuntimeError("--devices must be applied before JAX is imported")
  flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}".strip()
  os.environ["JAX_PLATFORMS"] = "cpu"


def _load_bench_train():
  """``scripts/bench_train.py`` as a module (its config overrides and --shrink)."""
  name = "bench_memory_bench_train"
  if name not in sys.modules:
    spec = importlib.util.spec_from_file_location(name, _SCRIPTS / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules[name]


def parse_args(argv: Sequence[str]):
  """``(args, config)``; every error exits with status 2 before any compilation."""
  import jax

  from score_jax import builders, configs_loader, train

  bench_train = _load_bench_train()
  parser = build_parser()
  args, rest = parser.parse_known_args(argv)
  try:
    overrides = bench_train.parse_overrides(rest)
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
      bench_train.shrink(config)
    bench_train.apply_overrides(config, overrides)
  except ValueError as e:
    parser.error(str(e))
  config.training.batch_size = args.batch
  if "training.n_jitted_steps" not in keys:
    config.training.n_jitted_steps = 1
  if args.remat is not None:
    config.model.remat = BEST_REMAT if args.remat == "best" else args.remat
  if args.grad_accum is not None:
    config.training.grad_accum_steps = args.grad_accum
  if config.training.get("parallel", "jit") != "jit":
    parser.error("bench_memory.py compiles the 'jit' data-parallel step only (training.parallel='jit')")
  n = jax.device_count()
  k = config.training.get("grad_accum_steps", 1)
  if args.batch % (n * k):
    parser.error(f"--batch {args.batch} does not split over {n} device(s) x {k} micro-batch(es); use a multiple "
                 f"of {n * k}")
  for what, value in (("--sample_batch", args.sample_batch), ("--inception_batch", args.inception_batch)):
    if value is not None and value % n:
      parser.error(f"{what} {value} is not divisible by the number of devices {n}")
  try:  # what the train step, the sampler and the Inception step build (discrete objectives included)
    sde = builders.build_sde(config)
    builders.build_model(config)
    builders.build_optimizer(config)
    train.loss_kind(config, sde)
    train.grad_accum_steps(config)
    builders.sampler_settings(config)
  except (ValueError, KeyError, AttributeError) as e:
    parser.error(f"the config does not build: {e}")
  return args, config


# ---- measuring -----------------------------------------------------------------------------------------

def memory_of(compiled) -> dict:
  """XLA's memory and cost analysis of one device's program of ``compiled``."""
  m = compiled.memory_analysis()
  out = dict(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
             temp_bytes=int(m.temp_size_in_bytes), alias_bytes=int(m.alias_size_in_bytes))
  out["bytes_per_device"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  out["flops"] = float(flops) if flops and flops > 0 else None
  return out


def _gib(n: int) -> str:
  return f"{n / 2 ** 30:.3f} GiB"


def _report(name: str, r: dict, n_devices: int) -> None:
  flops = "n/a" if r["flops"] is None else f"{r['flops']:.4g}"
  print(f"{name}: {_gib(r['bytes_per_device'])} per device ({_gib(r['bytes_per_device'] * n_devices)} in all over "
        f"{n_devices}) = arguments {_gib(r['argument_bytes'])} + outputs {_gib(r['output_bytes'])} + temporaries "
        f"{_gib(r['temp_bytes'])} - aliased {_gib(r['alias_bytes'])} | XLA flops {flops} | compile "
        f"{r['compile_s']:.1f} s", flush=True)


def _compile(fn, *args):
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return compiled, time.perf_counter() - start


def _abstract(tree, sharding):
  import jax

  return jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


SCAN_UNROLL = {"auto": None, "rolled": False, "unrolled": True}


def train_step_memory(config, mesh, gpu_peak: bool = False, scan: str = "auto") -> dict:
  """Compile the data-parallel train step of ``config`` on abstract arrays; its :func:`memory_of` and more."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec

  from score_jax import builders, parallel, train

  model, sde, optimizer = builders.build_model(config), builders.build_sde(config), builders.build_optimizer(config)
  replicated = NamedSharding(mesh, PartitionSpec())
  batch_sharding = NamedSharding(mesh, PartitionSpec(None, parallel.AXIS_NAME))
  key = jax.random.PRNGKey(0)
  state = jax.eval_shape(lambda k: train.init_train_state(k, config, model, optimizer), key)
  d, n = config.data, config.training.get("n_jitted_steps", 1)
  xs = jax.ShapeDtypeStruct((n, config.training.batch_size, d.image_size, d.image_size, d.num_channels),
                            jnp.float32, sharding=batch_sharding)
  step_fn = train.make_train_step(config, model, sde, optimizer)
  pstep = parallel.make_parallel_train_step(config, step_fn, "jit", mesh=mesh, unroll=SCAN_UNROLL[scan])
  args = (_abstract(state, replicated), xs, _abstract(key, replicated))
  compiled, compile_s = _compile(pstep.compiled_fn, *args)
  out = memory_of(compiled)
  out.update(compile_s=compile_s, n_params=int(sum(np.prod(a.shape) for a in jax.tree_util.tree_leaves(state.params))))
  if gpu_peak:
    real = train.init_train_state(key, config, model, optimizer)
    real = parallel.replicate(real.replace(ema_params=jax.tree_util.tree_map(jnp.copy, real.params)), "jit", mesh)
    x = jax.random.uniform(jax.random.PRNGKey(1), xs.shape)
    real, metrics = compiled(real, parallel.shard_batch(np.asarray(x), "jit", mesh), key)
    jax.block_until_ready((real, metrics))
    stats = jax.devices()[0].memory_stats() or {}
    out["peak_bytes_in_use"] = stats.get("peak_bytes_in_use")
  return out


def sampler_memory(config, mesh, batch: int) -> dict:
  """Compile ``builders.build_sampler`` on ``batch`` samples (EMA parameters abstract), sharded over ``mesh``."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec

  from score_jax import builders, models, parallel

  model, sde = builders.build_model(config), builders.build_sde(config)
  d = config.data
  shape = (batch, d.image_size, d.image_size, d.num_channels)
  x = jax.ShapeDtypeStruct((1,) + shape[1:], jax.numpy.float32)
  labels = jax.ShapeDtypeStruct((1,), jax.numpy.int32)
  params = jax.eval_shape(lambda k, x, labels: model.init(k, x, labels)["params"], jax.random.PRNGKey(0), x, labels)

  def sample(params, key):
    score_fn = models.get_score_fn(sde, model, {"params": params}, train=False,
                                   continuous=config.training.continuous)
    return builders.build_sampler(config, sde, score_fn, shape)(key, 0)

  replicated = NamedSharding(mesh, PartitionSpec())
  fn = jax.jit(sample, out_shardings=(NamedSharding(mesh, PartitionSpec(parallel.AXIS_NAME)), replicated))
  compiled, compile_s = _compile(fn, _abstract(params, replicated),
                                 _abstract(jax.random.PRNGKey(0), replicated))
  return dict(memory_of(compiled), compile_s=compile_s)


def inception_memory(config, mesh, batch: int) -> dict:
  """Compile the FID Inception ``pool3`` features of ``batch`` images of the config's size, sharded over ``mesh``."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec

  from score_jax import inception, parallel

  d = config.data
  net = inception.FIDInceptionV3()
  variables = jax.eval_shape(lambda k: net.init(k, jnp.zeros((1, inception.INPUT_SIZE, inception.INPUT_SIZE, 3))),
                             jax.random.PRNGKey(0))
  batch_sharding = NamedSharding(mesh, PartitionSpec(parallel.AXIS_NAME))
  images = jax.ShapeDtypeStruct((batch, d.image_size, d.image_size, 3), jnp.float32, sharding=batch_sharding)
  fn = jax.jit(lambda v, im: inception.apply(v, im)["pool3"], out_shardings=batch_sharding)
  compiled, compile_s = _compile(fn, _abstract(variables, NamedSharding(mesh, PartitionSpec())), images)
  return dict(memory_of(compiled), compile_s=compile_s)


def main(argv: Sequence[str] | None = None) -> dict:
  """Measure for ``argv`` (``sys.argv[1:]`` if None); print the JSON line of the train step last; return it."""
  argv = list(sys.argv[1:] if argv is None else argv)
  _set_devices(argv)
  args, config = parse_args(argv)
  import jax

  from score_jax import parallel

  mesh = parallel.make_mesh()
  n = mesh.size
  device = jax.devices()[0]
  t = config.training
  print(f"jax {jax.__version__} | {n} x {device.platform}:{device.device_kind} | config {args.config} | "
        f"{config.model.name}{' (shrunk)' if args.shrink else ''} | batch {t.batch_size} ({t.batch_size // n} per "
        f"device) | remat {config.model.get('remat', 'none')} | grad_accum_steps {t.get('grad_accum_steps', 1)} | "
        f"n_jitted_steps {t.get('n_jitted_steps', 1)}", flush=True)
  result = {}
  if "train" in args.parts:
    result = train_step_memory(config, mesh, gpu_peak=device.platform == "gpu", scan=args.scan)
    _report("train step", result, n)
    if result.get("peak_bytes_in_use") is not None:
      print(f"train step run on the GPU: peak_bytes_in_use {_gib(result['peak_bytes_in_use'])}", flush=True)
  extra = {}
  if "sampler" in args.parts:
    extra["sampler"] = sampler_memory(config, mesh, args.sample_batch or t.batch_size)
    _report(f"sampler ({config.sampling.method}, batch {args.sample_batch or t.batch_size})", extra["sampler"], n)
  if "inception" in args.parts:
    if config.data.num_channels != 3:
      print(f"inception: skipped ({config.data.num_channels} channels, Inception needs 3)", flush=True)
    else:
      extra["inception"] = inception_memory(config, mesh, args.inception_batch or t.batch_size)
      _report(f"inception (batch {args.inception_batch or t.batch_size})", extra["inception"], n)
  line = dict(result, device=f"{device.platform}:{device.device_kind}", n_devices=n, config=args.config,
              batch=t.batch_size, remat=config.model.get("remat", "none"),
              grad_accum_steps=t.get("grad_accum_steps", 1), n_jitted_steps=t.get("n_jitted_steps", 1), scan=args.scan,
              shrink=args.shrink, **{f"{k}_bytes_per_device": v["bytes_per_device"] for k, v in extra.items()},
              **{f"{k}_flops": v["flops"] for k, v in extra.items()})
  print(json.dumps(line), flush=True)
  return line


if __name__ == "__main__":
  main()
