"""Train one image model with score_jax and with the original (score_sde_pytorch) side by side, then evaluate both.

  python scripts/compare_training.py --original PATH --config configs/vp/cifar10_ddpmpp_continuous.py \\
      --data ../shared/data/cifar10-jpeg.tar.gz --out runs/compare --steps 3000 --batch 32 \\
      [--phase train|eval|all] [--seeds 0,1] [--samples 5000] [--bpd_examples 1000] \\
      [--inception_weights W.npz --fid_stats STATS.npz] [--config.model.nf=32 ...]

``PATH`` is a checkout of yang-song/score_sde_pytorch (nothing of it is copied here); its modules are imported as
``scripts/bench_train_torch.py`` imports them (the CUDA extensions replaced by its own pure-PyTorch upfirdn2d).
``--config`` names the same config file in both repositories; ``--config.x=y`` overrides apply to both (fields that
only score_jax has apply to score_jax alone).

**train** (``--phase train``): the original's network is built and initialised by its own code
(``models.utils.create_model``, ``torch.manual_seed(seed)``) and its weights converted to score_jax
(``score_jax.convert.from_pytorch_state_dict``), so both start from the same parameters. Step ``s`` of both takes
the same batch, ``Dataset.batch(s)`` of the CIFAR-10 folder or archive (same order, same flips), through each
implementation's own training step: the original's ``losses.get_step_fn`` with its ``get_optimizer``,
``optimization_manager`` (warm-up, clipping) and ``ExponentialMovingAverage``; score_jax's
``train.make_train_step``. The per-example draws (t, z, dropout) come from each implementation's own generator: the
runs are statistically, not bitwise, alike. Each step's two losses and times go to ``OUT/losses.jsonl``; at the end
both EMA models are written as score_jax checkpoints (``OUT/score_jax_ema``, ``OUT/original_ema``) and the loss
curves plotted (``OUT/loss_curves.png``). There is no resume: a killed training phase starts again.

**eval** (``--phase eval``): each EMA checkpoint is evaluated by score_jax's own ``--mode eval``
(:func:`score_jax.pipeline.evaluate`: the same sampler for both, ``sampling.*`` of the config) once per seed of
``--seeds``: bits/dim on ``--bpd_examples`` test images, and with ``--inception_weights`` and ``--fid_stats`` FID /
KID / IS of ``--samples`` samples. ``OUT/results.json`` and ``OUT/results.md`` get the table and the criterion.

The criterion, fixed before any run: the two loss curves' means over each 200-step window after the first agree
within 3% (relative to their mean), and each metric's difference is within the larger seed spread (max - min over
the seeds) of the two. The last line printed is one JSON object.
"""

# No `from __future__ import annotations`: tests load this file with importlib.
import argparse
import importlib.util
import json
import math
import pathlib
import sys
import time
from typing import Sequence

_SCRIPTS = pathlib.Path(__file__).resolve().parent
WINDOW = 200  # steps per loss window of the criterion
LOSS_TOLERANCE = 0.03  # relative difference of window means


def _load_script(name: str):
  spec = importlib.util.spec_from_file_location(f"_compare_{name}", _SCRIPTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def parse_args(argv: Sequence[str] | None = None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--original", required=True, help="checkout of yang-song/score_sde_pytorch")
  p.add_argument("--config", required=True, help="config file (the same name in both repositories)")
  p.add_argument("--data", required=True, help="CIFAR-10 folder or .tar.gz of class subfolders (data.root)")
  p.add_argument("--out", required=True, help="output directory")
  p.add_argument("--phase", choices=("train", "eval", "all"), default="all")
  p.add_argument("--steps", type=int, default=3000)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--seed", type=int, default=0, help="initialisation and data order")
  p.add_argument("--seeds", default="0,1", help="sampling / bits/dim seeds of the eval phase")
  p.add_argument("--samples", type=int, default=5000)
  p.add_argument("--bpd_examples", type=int, default=1000)
  p.add_argument("--inception_weights", default="", help="converted FID Inception weights (.npz)")
  p.add_argument("--fid_stats", default="", help="reference statistics of `python -m score_jax.eval stats`")
  p.add_argument("--threads", type=int, default=0, help="PyTorch threads (0: its default)")
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if not (a.startswith("--config.") and "=" in a)]
  if bad:
    p.error(f"unrecognized arguments: {' '.join(bad)} (config fields are --config.x=y)")
  args.overrides = [tuple(a[len("--config."):].split("=", 1)) for a in rest]
  args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  for name in ("steps", "batch", "samples"):
    if getattr(args, name) < 1:
      p.error(f"--{name} must be >= 1; got {getattr(args, name)}")
  return args


def jax_config(args):
  from score_jax import cli, configs_loader

  config = configs_loader.load_config(args.config)
  cli.apply_overrides(config, args.overrides)
  config.data.dataset, config.data.root = "folder", str(args.data)
  if str(args.data).endswith(".npz"):
    config.data.dataset = "npz"
  config.training.batch_size, config.training.n_iters, config.seed = args.batch, args.steps, args.seed
  return config


def torch_config(args, torch_bench):
  from score_jax import cli

  config = torch_bench.load_original_config(pathlib.Path(args.original).resolve(), args.config)
  keys = set(cli.config_keys(config))  # the original's fields: score_jax-only overrides apply to score_jax alone
  cli.apply_overrides(config, [(k, v) for k, v in args.overrides if k in keys])
  import torch

  config.device = torch.device("cpu")
  config.training.batch_size = args.batch
  return config


def window_means(values: Sequence[float], window: int = WINDOW) -> list[float]:
  return [sum(values[i:i + window]) / len(values[i:i + window]) for i in range(0, len(values), window)]


def _z(x: Sequence[float], y: Sequence[float]) -> float:
  """(mean x - mean y) over its standard error from the per-step spreads (steps taken as independent)."""
  import statistics

  if min(len(x), len(y)) < 2:
    return float("nan")
  se = math.sqrt(statistics.variance(x) / len(x) + statistics.variance(y) / len(y))
  return (statistics.mean(x) - statistics.mean(y)) / se if se else float("nan")


def loss_criterion(ours: Sequence[float], theirs: Sequence[float], window: int = WINDOW) -> dict:
  """The windows after the first: relative difference of the two means, and whether all are within tolerance;
  with each difference's z-score from the per-step noise, and the means over all steps after the first window
  (the noise of a window mean at a small batch can exceed the tolerance: read the z-scores beside it)."""
  a, b = window_means(ours, window)[1:], window_means(theirs, window)[1:]
  diffs = [abs(x - y) / (0.5 * (x + y)) for x, y in zip(a, b)]
  z = [_z(ours[i:i + window], theirs[i:i + window]) for i in range(window, len(ours), window)]
  rest_a, rest_b = list(ours[window:]), list(theirs[window:])
  overall = (dict(score_jax=sum(rest_a) / len(rest_a), original=sum(rest_b) / len(rest_b), z=_z(rest_a, rest_b))
             if rest_a and rest_b else None)
  return dict(window=window, score_jax=a, original=b, relative_differences=diffs, z_scores=z,
              after_first_window=overall, max_relative_difference=max(diffs) if diffs else None,
              within=bool(diffs) and max(diffs) <= LOSS_TOLERANCE, tolerance=LOSS_TOLERANCE)


def train_both(args) -> dict:
  import jax
  import numpy as np
  import torch
  from tqdm.auto import tqdm

  from score_jax import convert, datasets, pipeline, randomness, train

  torch_bench = _load_script("bench_train_torch")
  jconf = jax_config(args)  # first: both repositories have a top-level `configs` package
  for name in [n for n in sys.modules if n == "configs" or n.startswith("configs.")]:
    del sys.modules[name]  # score_jax's, loaded for jconf (built now); the original's come next
  original = torch_bench.import_original(args.original, ops="native")
  tconf = torch_config(args, torch_bench)
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  model = original.mutils.create_model(tconf)
  ema = original.ema.ExponentialMovingAverage(model.parameters(), decay=tconf.model.ema_rate)
  state_t = dict(optimizer=original.losses.get_optimizer(tconf, model.parameters()), model=model, ema=ema, step=0)
  t = tconf.training
  step_t = original.losses.get_step_fn(torch_bench.build_sde(original, tconf), train=True,
                                       optimize_fn=original.losses.optimization_manager(tconf),
                                       reduce_mean=t.reduce_mean, continuous=t.continuous,
                                       likelihood_weighting=t.likelihood_weighting)
  state_dict = lambda: {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
  exp = pipeline.setup(jconf)
  params = jax.tree_util.tree_map(jax.numpy.asarray, convert.from_pytorch_state_dict(state_dict(), jconf)["params"])
  ema_params = jax.tree_util.tree_map(jax.numpy.array, params)  # a copy: the step donates both
  state_j = train.TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params, ema_params=ema_params,
                             opt_state=exp.optimizer.init(params))
  step_j = jax.jit(train.make_train_step(jconf, exp.model, exp.sde, exp.optimizer), donate_argnums=0)
  key = exp.key(randomness.TRAIN)
  ds = datasets.get_dataset(jconf, "train")
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  n_params = sum(p.numel() for p in model.parameters())
  print(f"side by side: {jconf.model.name} {n_params:,} params | batch {args.batch} | {args.steps} steps | data "
        f"{args.data} ({len(ds)} images) | torch {torch.__version__} ({torch.get_num_threads()} threads) | "
        f"jax {jax.__version__} ({jax.default_backend()})", flush=True)
  losses = {"score_jax": [], "original": []}
  seconds = {"score_jax": 0.0, "original": 0.0}
  with open(out / "losses.jsonl", "w") as log:
    for step in tqdm(range(args.steps), desc="train both", unit="step"):
      images = ds.batch(step)["image"]  # [B, H, W, C], scaled as both expect
      t0 = time.perf_counter()
      loss_t = float(step_t(state_t, torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))).item())
      t1 = time.perf_counter()
      state_j, metrics = step_j(state_j, images, key)
      loss_j = float(metrics["loss"])
      t2 = time.perf_counter()
      if not (math.isfinite(loss_t) and math.isfinite(loss_j)):
        raise FloatingPointError(f"step {step}: non-finite loss (score_jax {loss_j}, original {loss_t})")
      losses["original"].append(loss_t)
      losses["score_jax"].append(loss_j)
      if step == 0:  # score_jax's first step compiles; reported apart from the training time
        first_step_s = dict(score_jax=t2 - t1, original=t1 - t0)
      else:
        seconds["original"] += t1 - t0
        seconds["score_jax"] += t2 - t1
      log.write(json.dumps(dict(step=step + 1, score_jax=loss_j, original=loss_t, s_score_jax=t2 - t1,
                                s_original=t1 - t0)) + "\n")
  ema.store(model.parameters())
  ema.copy_to(model.parameters())
  original_ema = convert.from_pytorch_state_dict(state_dict(), jconf)
  ema.restore(model.parameters())
  for name, variables in (("score_jax_ema", {"params": jax.device_get(state_j.ema_params)}),
                          ("original_ema", original_ema)):
    convert.save_converted(out / name, variables, args.steps)
  _plot(losses, out / "loss_curves.png")
  summary = dict(steps=args.steps, batch=args.batch, images_seen=args.steps * args.batch, n_params=n_params,
                 seconds=seconds, first_step_seconds=first_step_s,
                 losses=loss_criterion(losses["score_jax"], losses["original"]))
  (out / "train_summary.json").write_text(json.dumps(summary, indent=1))
  return summary


def _plot(losses: dict, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 4))
  for name, values in losses.items():
    window = max(1, min(WINDOW // 4, len(values) // 4 or 1))
    means = window_means(values, window)
    ax.plot([window * (i + 0.5) for i in range(len(means))], means, label=f"{name} (means over {window} steps)")
  ax.set_xlabel("step")
  ax.set_ylabel("training loss")
  ax.set_yscale("log")
  ax.legend()
  ax.set_title("score_jax vs score_sde_pytorch: same initial weights, same batches")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def eval_both(args) -> dict:
  from score_jax import pipeline

  out = pathlib.Path(args.out)
  results = {}
  for name in ("score_jax", "original"):
    checkpoint = out / f"{name}_ema"
    if not checkpoint.is_dir():
      raise FileNotFoundError(f"{checkpoint} not found: run --phase train first")
    for seed in args.seeds:
      config = jax_config(args)
      config.seed = seed
      e = config.eval
      e.enable_loss, e.enable_bpd, e.bpd_num_examples, e.bpd_num_repeats = False, True, args.bpd_examples, 1
      e.enable_sampling = bool(args.inception_weights and args.fid_stats)
      e.num_samples, e.inception_weights, e.fid_stats = args.samples, args.inception_weights, args.fid_stats
      record = pipeline.evaluate(config, out / f"eval_{name}", checkpoint=str(checkpoint))
      results.setdefault(name, []).append({k: record.get(k) for k in ("bpd", "bpd_se", "fid", "kid", "inception_score")
                                           } | {"seed": seed})
  table = {}
  for metric in ("bpd", "fid"):
    row = {}
    for name, runs in results.items():
      values = [r[metric] for r in runs if r.get(metric) is not None]
      if values:
        row[name] = dict(mean=sum(values) / len(values), spread=max(values) - min(values), values=values)
    if len(row) == 2:
      diff = abs(row["score_jax"]["mean"] - row["original"]["mean"])
      row["difference"] = diff
      row["within_seed_spread"] = diff <= max(row["score_jax"]["spread"], row["original"]["spread"])
    table[metric] = row
  return dict(runs=results, table=table)


def _write_markdown(out: pathlib.Path, result: dict) -> None:
  lines = ["| | score_jax | original |", "|---|---|---|"]
  train_summary = result.get("train")
  if train_summary:
    s = train_summary["seconds"]
    lines.append(f"| steps / images seen | {train_summary['steps']} / {train_summary['images_seen']} | same |")
    first = train_summary["first_step_seconds"]
    lines.append(f"| training time after step 1 | {s['score_jax']:.0f} s | {s['original']:.0f} s |")
    lines.append(f"| step 1 (score_jax: compile) | {first['score_jax']:.0f} s | {first['original']:.1f} s |")
    crit = train_summary["losses"]
    if crit["max_relative_difference"] is not None:
      lines.append(f"| loss, last {crit['window']}-step window | {crit['score_jax'][-1]:.4g} | "
                   f"{crit['original'][-1]:.4g} |")
  for metric, row in result.get("eval", {}).get("table", {}).items():
    if "score_jax" in row and "original" in row:
      cell = lambda r: f"{r['mean']:.4g} (spread {r['spread']:.2g} over {len(r['values'])} seeds)"
      lines.append(f"| {metric} | {cell(row['score_jax'])} | {cell(row['original'])} |")
  (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> dict:
  args = parse_args(argv)
  out = pathlib.Path(args.out)
  result = {}
  if args.phase in ("train", "all"):
    result["train"] = train_both(args)
  elif (out / "train_summary.json").exists():
    result["train"] = json.loads((out / "train_summary.json").read_text())
  if args.phase in ("eval", "all"):
    result["eval"] = eval_both(args)
  out.mkdir(parents=True, exist_ok=True)
  (out / "results.json").write_text(json.dumps(result, indent=1))
  _write_markdown(out, result)
  print(json.dumps(dict(out=str(out), loss_criterion=result.get("train", {}).get("losses", {}).get("within"),
                        table=result.get("eval", {}).get("table"))))
  return result


if __name__ == "__main__":
  sys.exit(0 if main() else 1)
