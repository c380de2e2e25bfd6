"""The cost of the progress bar inside a jitted sampler (score_jax.progress.count_calls): one host callback
per network evaluation.

  python scripts/bench_progress.py [--config CONFIG] [--batch B] [--steps N] [--repeats R] [--config.x=y ...]

Builds the config's network (default: a tiny NCSN++, configs/ve/cifar10_ncsnpp_continuous.py at 8x8, nf 8) with
random weights, compiles its PC sampler with and without the counting wrapper, runs each ``--repeats`` times
(alternating, after one warm-up call) and prints the median seconds of each, their ratio, and the overhead per
network evaluation. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import jax

from score_jax import builders, configs_loader, models, progress, train
from score_jax.cli import apply_overrides

TINY = {"data.image_size": 8, "model.nf": 8, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
        "model.attn_resolutions": (4,), "model.fir": False, "model.progressive_input": "none",
        "model.progressive": "none", "model.dropout": 0.0, "model.fourier_scale": 16}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
  parser.add_argument("--config", default="configs/ve/cifar10_ncsnpp_continuous.py")
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=200, help="PC steps (sampling.N); NFE = 2 N with Langevin")
  parser.add_argument("--repeats", type=int, default=3)
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not (a.startswith("--config.") and "=" in a)]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)} (config fields are --config.x=y)")
  overrides = [tuple(a[len("--config."):].split("=", 1)) for a in rest]
  config = configs_loader.load_config(args.config)
  if args.config.endswith("cifar10_ncsnpp_continuous.py") and not overrides:
    for name, value in TINY.items():
      section, field = name.split(".")
      config[section][field] = value
  apply_overrides(config, overrides)
  config.sampling.method = "pc"
  config.sampling.N = args.steps
  sde = builders.build_sde(config)
  model = builders.build_model(config)
  d = config.data
  shape = (args.batch, d.image_size, d.image_size, d.num_channels)
  state = train.init_train_state(jax.random.PRNGKey(0), config, model, builders.build_optimizer(config))
  score = models.get_score_fn(sde, model, {"params": state.params}, continuous=bool(config.training.continuous))
  fns = {"plain": jax.jit(builders.build_sampler(config, sde, score, shape)),
         "counted": jax.jit(builders.build_sampler(config, sde, progress.count_calls(score), shape))}
  key = jax.random.PRNGKey(1)
  times = {name: [] for name in fns}
  nfe = None
  for fn in fns.values():  # compile and warm up
    jax.block_until_ready(fn(key, 0))
  for _ in range(args.repeats):
    for name, fn in fns.items():
      with progress.bar(name, enabled=name == "counted"):
        t0 = time.perf_counter()
        x, n = fn(key, 0)
        jax.block_until_ready(x)
        times[name].append(time.perf_counter() - t0)
      nfe = int(n)
  med = {name: statistics.median(v) for name, v in times.items()}
  result = dict(device=jax.devices()[0].device_kind, batch=args.batch, nfe=nfe, plain_s=round(med["plain"], 4),
                counted_s=round(med["counted"], 4), ratio=round(med["counted"] / med["plain"], 4),
                overhead_us_per_eval=round((med["counted"] - med["plain"]) / nfe * 1e6, 1))
  print(f"PC sampler, {nfe} network evaluations, batch {args.batch} on {result['device']}: "
        f"{med['plain']:.3f} s without the bar, {med['counted']:.3f} s with it (x{result['ratio']:.3f}, "
        f"{result['overhead_us_per_eval']} us per evaluation)", file=sys.stderr)
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
