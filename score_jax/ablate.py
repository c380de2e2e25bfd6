r"""Sampler ablations: run a grid of ``sampling.*`` settings on one trained model and tabulate quality per NFE.

  python -m score_jax.ablate --config configs/toy/gmm2d.py --workdir runs/gmm2d --out runs/gmm2d/ablation \
      --num_samples 4096 --grid sampling.method=ddim,dpm_solver,heun --grid sampling.N=5,10,20,50

  python -m score_jax.ablate --config configs/ve/cifar10_ncsnpp_continuous.py --workdir runs/ve --out runs/ve/abl \
      --num_samples 10000 --grid sampling.predictor=reverse_diffusion,euler_maruyama --grid sampling.snr=0.12,0.16

RUN_DIR (``--workdir``) is a launcher run directory; its latest checkpoint (EMA weights) is used, or
``--checkpoint`` (a step, or a converted original checkpoint) for image models. Each ``--grid KEY=V1,V2,...``
names a ``sampling.*`` field of the config and its values (parsed as the field's type); the product of all
grids is run, every cell from the same seed (``config.seed``), so the cells share their prior draws (the ODE
sampler's too: :func:`make_cell_sampler`).

Written to OUT_DIR:
  results.csv, results.md   one row per cell: the grid values, metric(s), NFE, wall time, samples/s
  quality_vs_nfe.png        the metric against NFE for every cell
  sweep_<field>.png         the metric against each swept field, one line per setting of the others
  samples.png               the cells' samples side by side
  cells/<id>/               each cell's samples and result.json; a finished cell is never recomputed, so a
                            killed or extended run picks up where it stopped

Metrics: for the 2-D default (data.dataset=gmm2d) the exact ones: sliced Wasserstein-2 and MMD to samples of
the true mixture (with their true-vs-true floor) and the mean NLL of the samples under the true mixture
(against the mixture's entropy, the NLL of true samples). For images: FID / IS / KID with the FID Inception
weights (eval.inception_weights or $SCORE_JAX_INCEPTION_WEIGHTS) and eval.fid_stats when both are present;
otherwise only NFE and speed. Wall time excludes compilation (reported apart) and metric computation.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from score_jax import builders, cli, fileio, randomness, sampling, validation

__all__ = ["parse_grid", "make_cells", "run_ablation", "main", "make_cell_sampler", "prior_draws"]

SECTION = "sampling"  # grid keys: the checkpoint fixes the model and the SDE, so only the sampler varies
_MAX_PANELS = 16  # cells drawn in samples.png
_MAX_LINES = 10  # lines per sweep plot
_FLOOR_SETS = 5  # independent true sets for the 2-D default's noise floor


# ---- the grid ------------------------------------------------------------------------------------------------

def _parse_value(text: str, current: Any, key: str):
  """``text`` as the type of the field's ``current`` value."""
  text = text.strip()
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"--grid {key}: {text!r} is not a boolean (true/false).")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"--grid {key}: {text!r} is not an integer ({key} is an int).") from None
  if isinstance(current, float):
    try:
      value = float(text)
    except ValueError:
      raise ValueError(f"--grid {key}: {text!r} is not a number ({key} is a float).") from None
    if not np.isfinite(value):
      raise ValueError(f"--grid {key}: {text!r} is not a finite number.")
    return value
  if isinstance(current, str):
    return text
  raise ValueError(f"--grid {key}: fields of type {type(current).__name__} cannot be swept.")


def parse_grid(config: ml_collections.ConfigDict, specs: list[str]) -> dict[str, list]:
  """``['sampling.snr=0.1,0.2', ...]`` -> ``{'sampling.snr': [0.1, 0.2], ...}``, checked against ``config``."""
  if not specs:
    raise ValueError("give at least one --grid sampling.FIELD=V1,V2,... (e.g. --grid sampling.N=10,20,50).")
  grid: dict[str, list] = {}
  for spec in specs:
    key, sep, values = spec.partition("=")
    key = key.strip()
    if not sep or not values.strip():
      raise ValueError(f"--grid {spec!r}: expected KEY=V1,V2,... such as sampling.snr=0.12,0.16.")
    section, _, field = key.partition(".")
    if section != SECTION or not field:
      raise ValueError(f"--grid key {key!r}: only {SECTION}.* fields can be swept (the checkpoint fixes the model "
                       "and the SDE).")
    if field not in config[SECTION]:
      raise ValueError(f"--grid key {key!r} is not a config field; {SECTION} has {sorted(config[SECTION].keys())}.")
    if key in grid:
      raise ValueError(f"--grid key {key!r} is given twice; list all its values in one --grid.")
    parsed = [_parse_value(v, config[SECTION][field], key) for v in values.split(",")]
    if len(set(map(repr, parsed))) != len(parsed):
      raise ValueError(f"--grid {key}: repeated values in {values!r}.")
    grid[key] = parsed
  return grid


@dataclasses.dataclass(frozen=True)
class Cell:
  """One grid point: its overrides, its config, the checked sampler settings, and its directory name."""

  overrides: dict
  config: ml_collections.ConfigDict
  settings: dict
  cell_id: str

  @property
  def label(self) -> str:
    return ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in self.overrides.items())


def make_cells(config: ml_collections.ConfigDict, grid: dict[str, list], fingerprint: dict) -> list[Cell]:
  """Every cell of the product grid, each checked (``builders.sampler_settings``) before any sampling."""
  cells = []
  for values in itertools.product(*grid.values()):
    overrides = dict(zip(grid, values))
    cell_config = config.copy_and_resolve_references()
    for key, value in overrides.items():
      cell_config[SECTION][key.split(".", 1)[1]] = value
    try:
      settings = builders.sampler_settings(cell_config)
    except ValueError as e:
      raise ValueError(f"grid cell {overrides}: {e}") from None
    identity = dict(fingerprint, sampling=cell_config[SECTION].to_dict())
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]
    cells.append(Cell(overrides, cell_config, settings, digest))
  return cells


# ---- the model and the metric of each kind of config ----------------------------------------------------

@dataclasses.dataclass
class _Target:
  """How to sample one cell and score its samples: the 2-D default or an image model."""

  make_sample_fn: Callable[[ml_collections.ConfigDict, int], Callable]  # (config, batch) -> fn(key, offset)
  to_output: Callable[[jax.Array], np.ndarray]  # samples as saved (float 2-D points or uint8 images)
  metric_fn: Callable[[pathlib.Path, np.ndarray], dict] | None
  primary: str | None  # the metric plotted against NFE (lower is better)
  reference: dict  # numbers every cell is compared with (noise floors), for the table
  checkpoint: str
  kind: str


def prior_draws(sde, key, offset, shape):
  """The prior sample ``[B, ...]`` (``shape``) of examples ``offset + b`` as the PC and the fast samplers draw it
  (``randomness.normal_draws`` of stream ``PRIOR``, scaled by the prior's std)."""
  keys = randomness.example_keys(key, int(shape[0]), offset)
  return randomness.normal_draws(keys, randomness.PRIOR, 0, tuple(shape[1:])) * sde.prior_std()


def make_cell_sampler(cell_config: ml_collections.ConfigDict, sde, score_fn, shape):
  """``sample(key, offset) -> (samples, nfe)`` of one cell, every method starting from :func:`prior_draws`.

  The ODE sampler of :func:`score_jax.builders.build_sampler` draws its prior from ``fold_in(key, i)`` alone (as
  ``--mode sample`` keeps it), unlike the others; here it gets the others' draws, so that the cells of one grid
  compare sample by sample.
  """
  if cell_config.sampling.method != "ode":
    return builders.build_sampler(cell_config, sde, score_fn, shape)
  st = builders.sampler_settings(cell_config)
  shape = tuple(int(d) for d in shape)

  def sample(key, offset):
    return sampling.ode_sample(None, sde, score_fn, shape, z=prior_draws(sde, key, offset, shape), rtol=st["rtol"],
                               atol=st["atol"], eps=st["eps"], denoise=st["denoise"], solver=st["solver"],
                               steps=st["steps"])

  return sample


def _toy_target(config, workdir, num_samples: int) -> _Target:
  from score_jax import gmm, metrics
  from score_jax.pipeline import toy

  state = toy.load_state(config, str(workdir))  # a checkpoint that does not fit the config fails here
  sde, score_fn = toy.score_fn(config, state)
  mixture = gmm.default_mixture()
  key = jax.random.PRNGKey(config.seed)
  draw = lambda stream: mixture.sample(jax.random.fold_in(key, stream), num_samples)
  true = draw(randomness.ABLATE_TRUE)
  sw_key = jax.random.fold_in(key, randomness.ABLATE_SLICES)

  def metric_fn(_, x):
    x = jnp.asarray(np.asarray(x, np.float32))
    if not np.all(np.isfinite(np.asarray(x))):
      return dict(sliced_w2=float("nan"), mmd=float("nan"), nll=float("nan"), nll_se=float("nan"), finite=False)
    nll = -np.asarray(mixture.log_prob(x), np.float64)
    return dict(sliced_w2=float(metrics.sliced_wasserstein(sw_key, true, x)), mmd=float(metrics.mmd_rbf(true, x)),
                nll=float(nll.mean()), nll_se=float(nll.std(ddof=1) / np.sqrt(len(nll))), finite=True)

  # The same metrics between the true set and independent true sets: the floor a perfect sampler reaches,
  # and how much the distances move from one sample set to another.
  floors = [metric_fn(None, draw(randomness.ABLATE_FLOOR + 1000 * i)) for i in range(_FLOOR_SETS)]
  reference = {name: float(np.mean([f[name] for f in floors])) for name in ("sliced_w2", "mmd", "nll")}
  reference.update({f"{name}_sd": float(np.std([f[name] for f in floors], ddof=1)) for name in ("sliced_w2", "mmd")})

  def make(cell_config, batch):
    return make_cell_sampler(cell_config, sde, score_fn, (batch, mixture.dim))

  digest = hashlib.sha256((pathlib.Path(workdir) / toy.CHECKPOINT).read_bytes()).hexdigest()[:12]
  return _Target(make, lambda x: np.asarray(x, np.float32), metric_fn, "sliced_w2", reference,
                 f"{toy.CHECKPOINT} (sha256 {digest}...)", "toy")


def _image_target(config, workdir, checkpoint, feature_fn=None) -> _Target:
  from score_jax import features, inception, pipeline
  from score_jax.pipeline.evaluators import samples as samples_evaluator

  exp = pipeline.setup(config)
  params, tag, _ = pipeline.load_params(exp, workdir, checkpoint)  # mismatching checkpoints fail here
  weights = config.eval.get("inception_weights", "") or os.environ.get(inception.WEIGHTS_ENV, "")
  stats = config.eval.get("fid_stats", "")
  metric_fn, primary = None, None
  if stats and (weights or feature_fn is not None):
    from score_jax import metrics

    metrics.load_stats(stats)  # readable and sane before any sampling
    reference = features.load_reference_features(stats)
    if feature_fn is None:
      feature_fn = samples_evaluator.inception_feature_fn(config)  # eval.inception_weights, eval.resize

    def metric_fn(cell_dir, _):
      return samples_evaluator.sample_metrics(cell_dir, feature_fn, stats=stats, reference_features=reference,
                                              progress=False)
    primary = "fid"
  else:
    logging.warning("no FID Inception weights and/or eval.fid_stats: the table has NFE and speed only.")

  def make(cell_config, batch):  # every method from the same prior draws (make_cell_sampler)
    fn = pipeline.make_sample_fn(dataclasses.replace(exp, config=cell_config), batch,
                                 build_sampler=make_cell_sampler)
    return lambda key, offset: fn(params, key, offset)

  return _Target(make, lambda x: pipeline.to_uint8(exp, x), metric_fn, primary, {}, tag, "images")


# ---- running the cells ---------------------------------------------------------------------------------------

def _run_cell(cell: Cell, target: _Target, num_samples: int, batch_size: int, key, cell_dir: pathlib.Path,
              progress: bool) -> dict:
  """Sample ``num_samples`` in batches (compiled ahead, then timed), save them, compute the metric."""
  sample_fn = jax.jit(target.make_sample_fn(cell.config, batch_size))
  t0 = time.perf_counter()
  compiled = sample_fn.lower(key, np.int32(0)).compile()
  compile_s = time.perf_counter() - t0
  outputs, nfes, wall = [], [], 0.0
  for start in tqdm(range(0, num_samples, batch_size), desc=cell.label[:40], unit="batch", leave=False,
                    disable=not progress):
    t0 = time.perf_counter()
    x, nfe = compiled(key, np.int32(start))
    x = jax.block_until_ready(x)
    wall += time.perf_counter() - t0
    outputs.append(target.to_output(x)[: num_samples - start])
    nfes.append(float(nfe))
  samples = np.concatenate(outputs)
  cell_dir.mkdir(parents=True, exist_ok=True)
  if target.kind == "images":  # the chunk format of --mode sample, so score_jax.eval can read it
    fileio.savez(str(cell_dir / "samples_0000000.npz"), images=samples, index=np.arange(len(samples)))
  else:
    fileio.savez(str(cell_dir / "samples.npz"), samples=samples)
  result = dict(cell=cell.cell_id, **{k: v for k, v in cell.overrides.items()}, method=cell.settings["method"],
                nfe=float(np.mean(nfes)), wall_s=wall, compile_s=compile_s, samples_per_s=num_samples / wall,
                num_samples=num_samples)
  if target.metric_fn is not None:  # FID features of every sample: minutes on a CPU, so timed and said
    logging.info("%s: metrics of %d samples ...", cell.label, num_samples)
    t0 = time.perf_counter()
    result.update(target.metric_fn(cell_dir, samples))
    result["metric_s"] = time.perf_counter() - t0
    logging.info("%s: metrics in %.1f s", cell.label, result["metric_s"])
  fileio.write_json(str(cell_dir / "result.json"), result)
  return result


def _load_cell(cell_dir: pathlib.Path, cell: Cell, num_samples: int) -> dict | None:
  path = cell_dir / "result.json"
  if not path.exists():
    return None
  try:
    result = json.loads(path.read_text())
  except (OSError, ValueError):
    return None
  return result if result.get("cell") == cell.cell_id and result.get("num_samples") == num_samples else None


def run_ablation(config: ml_collections.ConfigDict, workdir, out, grid_specs: list[str], *, num_samples: int,
                 batch_size: int | None = None, checkpoint: str | None = None, progress: bool = True,
                 command: str = "", feature_fn=None) -> dict:
  """Run (or resume) the grid and write the table and the plots; returns ``{'rows': [...], ...}``.

  ``feature_fn`` replaces the FID Inception network for image models (e.g. a stand-in in tests); the
  statistics still come from ``eval.fid_stats``.

  Everything that can be wrong with the input (grid keys and values, sampler names, the checkpoint) fails
  before the first cell is sampled.
  """
  if not validation.is_int(num_samples, 2):
    raise ValueError(f"--num_samples must be an integer >= 2; got {num_samples!r}.")
  batch_size = int(batch_size or config.eval.batch_size)
  if batch_size < 1:
    raise ValueError(f"--batch_size must be >= 1; got {batch_size}.")
  batch_size = min(batch_size, num_samples)
  workdir, out = pathlib.Path(workdir), pathlib.Path(out)
  toy = builders.is_toy(config)
  if toy and checkpoint not in (None, ""):
    raise ValueError("--checkpoint applies to image models; the 2-D default keeps one checkpoint in --workdir.")
  grid = parse_grid(config, grid_specs)
  make_cells(config, grid, {})  # every cell's sampler settings, before the model is loaded
  if toy:
    target = _toy_target(config, workdir, num_samples)
  else:
    target = _image_target(config, workdir, checkpoint, feature_fn)
  # A cell is identified by everything its samples depend on, so a retrained checkpoint gets new cells.
  fingerprint = dict(workdir=str(workdir.resolve()), checkpoint=target.checkpoint, seed=int(config.seed),
                     model=config.model.to_dict(), training_sde=str(config.training.sde), num_samples=num_samples,
                     batch_size=batch_size)
  cells = make_cells(config, grid, fingerprint)
  key = randomness.run_key(config.seed, randomness.ABLATE_SAMPLE)
  rows, computed = [], 0
  for cell in tqdm(cells, desc="cells", unit="cell", disable=not progress):
    cell_dir = out / "cells" / cell.cell_id
    row = _load_cell(cell_dir, cell, num_samples)
    if row is None:
      row = _run_cell(cell, target, num_samples, batch_size, key, cell_dir, progress)
      computed += 1
    rows.append(row)
  _write_outputs(out, grid, cells, rows, target, command)
  return dict(rows=rows, cells_computed=computed, cells_reused=len(cells) - computed, out=str(out),
              checkpoint=target.checkpoint, reference=target.reference)


# ---- tables and plots ----------------------------------------------------------------------------------------

def _columns(grid, rows, target) -> list[str]:
  metric_cols = [k for k in ("sliced_w2", "mmd", "nll", "nll_se", "fid", "inception_score", "kid") if k in rows[0]]
  method = [] if f"{SECTION}.method" in grid else ["method"]
  return list(grid) + method + ["nfe"] + metric_cols + ["wall_s", "compile_s", "samples_per_s", "num_samples",
                                                         "cell"]


def _fmt(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def _write_outputs(out: pathlib.Path, grid, cells, rows, target, command: str) -> None:
  out.mkdir(parents=True, exist_ok=True)
  cols = _columns(grid, rows, target)
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=cols, extrasaction="ignore")
  writer.writeheader()
  writer.writerows(rows)
  fileio.write_bytes(str(out / "results.csv"), buffer.getvalue().encode())

  lines = ["# Sampler ablation", ""]
  if command:
    lines += ["```", command, "```", ""]
  lines += [f"Checkpoint: `{target.checkpoint}`; {rows[0]['num_samples']} samples per cell; wall time excludes "
            "compilation (`compile_s`) and the metric.", ""]
  if target.reference:
    ref = target.reference
    lines += [f"Exact references, true vs independent true sets of the same size (mean ± sd over {_FLOOR_SETS} "
              f"sets): sliced W2 {ref['sliced_w2']:.4f} ± {ref['sliced_w2_sd']:.4f}, MMD {ref['mmd']:.2e} ± "
              f"{ref['mmd_sd']:.1e}; NLL under the true mixture of true samples (its entropy) {ref['nll']:.4f} nats.",
              ""]
  elif target.primary is None:
    lines += ["No FID Inception weights / statistics were given: NFE and speed only.", ""]
  lines.append("| " + " | ".join(c.split(".", 1)[-1] for c in cols) + " |")
  lines.append("|" + "---|" * len(cols))
  for row in rows:
    lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in cols) + " |")
  lines += ["", "![quality vs NFE](quality_vs_nfe.png)", "", "![samples](samples.png)", ""]
  fileio.write_bytes(str(out / "results.md"), "\n".join(lines).encode())
  _plots(out, grid, cells, rows, target)


def _numeric(values) -> bool:
  return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _plots(out: pathlib.Path, grid, cells, rows, target) -> None:
  from score_jax.plots import plt  # pyplot on the Agg backend

  metric = target.primary
  if metric is not None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    # One line per setting of the non-numeric fields (e.g. per sampler), through its numeric sweeps.
    categorical = [k for k, values in grid.items() if not _numeric(values)]
    groups: dict[tuple, list] = {}
    for row in rows:
      groups.setdefault(tuple(row[k] for k in categorical), []).append(row)
    for group_key, group in groups.items():
      group = sorted(group, key=lambda r: r["nfe"])
      label = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in zip(categorical, group_key)) or "all cells"
      ax.plot([r["nfe"] for r in group], [r[metric] for r in group], marker="o", label=label)
    if all(r[metric] > 0 for r in rows):
      ax.set_yscale("log")
    if metric in target.reference:
      ax.axhline(target.reference[metric], ls="--", color="gray", label="true vs true")
    ax.legend(fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("NFE (score evaluations per sample)")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs NFE (lower is better)")
    fig.tight_layout()
    fileio.savefig(fig, str(out / "quality_vs_nfe.png"))
    plt.close(fig)
    for key, values in grid.items():
      if len(values) < 2:
        continue
      others = [k for k in grid if k != key]
      fig, ax = plt.subplots(figsize=(6, 4.5))
      groups: dict[tuple, list] = {}
      for row in rows:
        groups.setdefault(tuple(row[k] for k in others), []).append(row)
      numeric = _numeric(values)
      for n, (group_key, group) in enumerate(groups.items()):
        if n == _MAX_LINES:
          break
        group = sorted(group, key=lambda r: values.index(r[key]))
        xs = [r[key] if numeric else values.index(r[key]) for r in group]
        label = ", ".join(f"{k.split('.', 1)[1]}={v}" for k, v in zip(others, group_key)) or None
        ax.plot(xs, [r[metric] for r in group], marker="o", label=label)
      if not numeric:
        ax.set_xticks(range(len(values)), [str(v) for v in values])
      if metric in target.reference:
        ax.axhline(target.reference[metric], ls="--", color="gray")
      ax.set_xlabel(key)
      ax.set_ylabel(metric)
      if others:
        ax.legend(fontsize=7)
      fig.tight_layout()
      fileio.savefig(fig, str(out / f"sweep_{key.split('.', 1)[1]}.png"))
      plt.close(fig)
  _samples_figure(out, cells, rows, target)


def _samples_figure(out: pathlib.Path, cells, rows, target) -> None:
  from score_jax.plots import plt

  shown = list(zip(cells, rows))[:_MAX_PANELS]
  ncol = min(4, len(shown))
  nrow = -(-len(shown) // ncol)
  fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 3.4 * nrow), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, (cell, row) in zip(axes.flat, shown):
    cell_dir = out / "cells" / cell.cell_id
    if target.kind == "toy":
      with np.load(cell_dir / "samples.npz") as f:
        pts = f["samples"][:4096]
      ax.scatter(pts[:, 0], pts[:, 1], s=0.6, alpha=0.5, color="tab:red")
      ax.set_xlim(-5, 5)
      ax.set_ylim(-5, 5)
      ax.set_aspect("equal")
    else:
      with np.load(cell_dir / "samples_0000000.npz") as f:
        images = f["images"][:16]
      grid = fileio.image_grid(images, ncol=4)
      ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray" if grid.shape[-1] == 1 else None)
    metric = f", {target.primary} {row[target.primary]:.3g}" if target.primary else ""
    ax.set_title(f"{cell.label}\nNFE {row['nfe']:.0f}{metric}", fontsize=7)
  fig.tight_layout()
  fileio.savefig(fig, str(out / "samples.png"))
  plt.close(fig)


# ---- command line --------------------------------------------------------------------------------------------

def parser() -> cli.ArgumentParser:
  """The flags of ``python -m score_jax.ablate`` (absl spellings, as before)."""
  p = cli.ArgumentParser(prog="python -m score_jax.ablate", description=__doc__.split("\n\n")[0], epilog=__doc__)
  p.add_config(help="path to the ml-collections config of the run in --workdir")
  p.add_argument("--workdir", required=True, help="launcher run directory whose latest checkpoint is used")
  p.add_argument("--out", required=True, help="output directory for results.csv, results.md, the plots and cells/")
  p.add_argument("--num_samples", type=int, required=True, help="samples per cell")
  p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                 help="a sampling.* field and its values (repeatable)")
  p.add_argument("--batch_size", type=int, default=None, help="samples per batch (default: eval.batch_size)")
  p.add_argument("--checkpoint", default=None, help="image models: a step or a converted original checkpoint "
                 "directory")
  p.add_bool("progress", True, "Show progress bars.")
  return p


def _main(args, argv: list[str]) -> None:
  if not os.path.isdir(args.workdir):
    raise FileNotFoundError(f"--workdir {args.workdir} is not a directory; give the run directory that python -m "
                            "score_jax.main trained.")
  cli.check_output_dir(args.out, "--out")
  command = "python -m score_jax.ablate " + " ".join(a for a in argv if not a.startswith("--progress"))
  result = run_ablation(args.config, args.workdir, args.out, args.grid, num_samples=args.num_samples,
                        batch_size=args.batch_size, checkpoint=args.checkpoint, progress=args.progress,
                        command=command)
  print((pathlib.Path(result["out"]) / "results.md").read_text())
  print(f"{result['cells_computed']} cells computed, {result['cells_reused']} reused; {result['out']}")


def main(argv=None) -> int:
  """``python -m score_jax.ablate`` on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
  argv = list(sys.argv[1:] if argv is None else argv)
  return cli.run(lambda args: _main(args, argv), argv, parser=parser())


def run():
  raise SystemExit(main())


if __name__ == "__main__":
  run()
