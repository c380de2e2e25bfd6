"""Train, evaluate and sample the image score models: what ``python -m score_jax.main`` runs for image configs.

Classifier configs (``configs/classifier/``, :mod:`score_jax.classifier`) train and evaluate with the same loop.

Everything is driven by one config (the original's field names, see ``configs/``) and one work directory::

  DIR/checkpoints/<step>/          orbax checkpoints (score_jax.checkpoints): params, EMA, optimizer state, step
  DIR/tensorboard/                 TensorBoard scalars and sample grids (tensorboardX: no TensorFlow needed)
  DIR/train_log.jsonl              one JSON line per logged step (loss, grad norm, images/s, eval loss)
  DIR/snapshots/step_<k>/          sample grid (grid.png) and samples (samples.npz) at each periodic snapshot
  DIR/eval/<checkpoint>.json       --mode eval: test loss and bits/dim, each with its standard error
                                   (classifiers: test accuracy, overall and per noise-level bin)
  DIR/samples/<checkpoint>_<method>/  --mode sample: samples_<start>.npz chunks, grid.png, meta.json

Randomness comes from ``config.seed`` alone: ``fold_in(PRNGKey(seed), stream)`` gives the initialisation,
training, snapshot-sampling, evaluation and sampling keys; step ``s`` of training folds in ``s`` and each
example its index in the global batch (see :mod:`score_jax.train`), and sample ``i`` of ``--mode sample``
draws from ``fold_in(key, i)``. So a resumed run continues exactly, and the numbers do not depend on the
device count (nor, for samples, on ``eval.batch_size``; see :func:`sample` for the one exception).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from score_jax import builders, checkpoints, classifier, datasets, fileio, likelihood, models, parallel, sde_lib, train

__all__ = ["Experiment", "setup", "train_and_evaluate", "dry_run", "evaluate", "sample", "load_samples",
           "sample_chunks", "sample_features", "summary_line", "STREAM_INIT", "STREAM_TRAIN", "STREAM_SNAPSHOT",
           "STREAM_EVAL", "STREAM_SAMPLE"]

log = logging.getLogger(__name__)

# Independent key streams folded into PRNGKey(config.seed).
STREAM_INIT, STREAM_TRAIN, STREAM_SNAPSHOT, STREAM_EVAL, STREAM_SAMPLE, STREAM_BPD = range(6)
SAMPLING_METHODS = builders.SAMPLING_METHODS
_GRID_MAX = 64  # images in a PNG grid
_FEATURE_BATCH = 200  # images per call of the feature network (the FID Inception at 299 x 299)
ALL_CHECKPOINTS = "all"  # --mode eval --checkpoint=all: every checkpoint of the workdir
FEATURES_PREFIX = "features_"  # folder of a sample directory holding one feature network's features
_NOISE_BINS = 10  # bins of t of a classifier's accuracy, where a config sets no eval.num_noise_bins


# ---- building ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Experiment:
  """The parts of a run built from its config (no parameters yet).

  Attributes:
    config: the experiment config.
    model, sde, optimizer: the flax network, the SDE and the optax transformation.
    parallel_mode: ``'jit'`` or ``'pmap'`` (``training.parallel``).
    n_devices: devices the batch is split over.
    image_shape: ``(H, W, C)`` of one example.
    abstract_state: the :class:`score_jax.train.TrainState` as shapes and dtypes (``jax.eval_shape``).
    n_params: number of network parameters.
    task: ``'score'``, or ``'classifier'`` for a noise-conditional classifier (a config with a ``classifier``
      section, :mod:`score_jax.classifier`): ``model`` is then the classifier and the objective cross-entropy.
  """

  config: ml_collections.ConfigDict
  model: Any
  sde: sde_lib.SDE
  optimizer: Any
  parallel_mode: str
  n_devices: int
  image_shape: tuple[int, int, int]
  abstract_state: train.TrainState
  n_params: int
  task: str = "score"

  @property
  def continuous(self) -> bool:
    return bool(self.config.training.continuous)

  def key(self, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.PRNGKey(self.config.seed), stream)


def _positive_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be a positive int; got {value!r}.")
  return int(value)


def _non_negative_int(value, name: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
    raise ValueError(f"{name} must be a non-negative int (0 = off); got {value!r}.")
  return int(value)


def n_jitted_steps(config: ml_collections.ConfigDict):
  """``training.n_jitted_steps``; 1 where a config has none (the original's standalone CelebA-HQ / FFHQ configs)."""
  return config.training.get("n_jitted_steps", 1)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raise ValueError naming the field for settings the image pipeline cannot run, before any work."""
  if not builders.is_classifier(config) and not config.get("model", {}).get("name"):
    raise ValueError("model.name is not set: configs/default_*_configs.py hold shared defaults, not an experiment; "
                     "use an experiment config such as configs/ve/cifar10_ncsnpp_continuous.py.")
  t = config.training
  seed = config.get("seed", None)
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int; got {seed!r}.")
  n = _positive_int(n_jitted_steps(config), "training.n_jitted_steps")
  _positive_int(t.batch_size, "training.batch_size")
  _positive_int(t.n_iters, "training.n_iters")
  _positive_int(t.log_freq, "training.log_freq")
  _non_negative_int(t.get("eval_freq", 0), "training.eval_freq")
  for name in ("snapshot_freq", "snapshot_freq_for_preemption"):
    value = _non_negative_int(t.get(name, 0), f"training.{name}")
    if value % n:
      raise ValueError(f"training.{name}={value} is not a multiple of training.n_jitted_steps={n}: checkpoints are "
                       f"written between fused calls of {n} steps, so this one would never fall due. Use a multiple "
                       f"of {n} (e.g. {max(n, value // n * n)}).")
  _non_negative_int(t.get("keep_snapshots", 0), "training.keep_snapshots")
  _positive_int(t.get("snapshot_num_samples", _GRID_MAX), "training.snapshot_num_samples")
  if t.get("parallel", "jit") not in parallel.MODES:
    raise ValueError(f"training.parallel={t.parallel!r}; expected one of {list(parallel.MODES)}.")
  if not builders.is_classifier(config):
    builders.sampler_settings(config)  # sampling.method and the fields it reads
  e = config.eval
  _positive_int(e.batch_size, "eval.batch_size")
  _positive_int(e.num_samples, "eval.num_samples")
  _positive_int(e.get("bpd_num_repeats", 1), "eval.bpd_num_repeats")
  _non_negative_int(e.get("bpd_num_examples", 0), "eval.bpd_num_examples")
  if e.get("bpd_dataset", "test") not in ("train", "test"):
    raise ValueError(f"eval.bpd_dataset={e.bpd_dataset!r}; expected 'train' or 'test'.")
  if config.data.dataset not in datasets.DATASETS:
    raise ValueError(f"data.dataset={config.data.dataset!r}; expected one of {sorted(datasets.DATASETS)} for image "
                     "models, or 'gmm2d' (the 2-D default, configs/toy/gmm2d.py).")


def setup(config: ml_collections.ConfigDict) -> Experiment:
  """Check ``config`` and build its network, SDE and optimizer; the state only as shapes (cheap)."""
  check_config(config)
  sde = builders.build_sde(config)
  task = "classifier" if builders.is_classifier(config) else "score"
  model = builders.build_classifier(config) if task == "classifier" else builders.build_model(config)
  optimizer = builders.build_optimizer(config)
  if task == "score":
    train.loss_kind(config, sde)  # the objective must be defined for this SDE
  elif config.training.get("snapshot_sampling", False):
    raise ValueError("training.snapshot_sampling=True, but a classifier config has no sampler; set it to False.")
  mode = config.training.get("parallel", "jit")
  n_devices = jax.device_count() if mode == "jit" else jax.local_device_count() * jax.process_count()
  parallel.check_batch_size(config.training.batch_size, n_devices, "training.batch_size")
  d = config.data
  image_shape = (int(d.image_size), int(d.image_size), int(d.num_channels))
  init_label = classifier.INIT_SIGMA if task == "classifier" else 0
  abstract = jax.eval_shape(lambda k: train.init_train_state(k, config, model, optimizer, init_label=init_label),
                            jax.random.PRNGKey(0))
  n_params = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract.params))
  return Experiment(config=config, model=model, sde=sde, optimizer=optimizer, parallel_mode=mode,
                    n_devices=n_devices, image_shape=image_shape, abstract_state=abstract, n_params=n_params, task=task)


def _objective(exp: Experiment) -> str:
  c = exp.config
  if exp.task == "classifier":
    return f"{c.classifier.name} ({c.classifier.num_classes} classes) {type(exp.sde).__name__} cross-entropy"
  return f"{c.model.name} {type(exp.sde).__name__} {train.loss_kind(c, exp.sde)}"


def summary_line(exp: Experiment, mode: str, extra: str = "") -> str:
  """One line: devices, batch, parameter count, model / SDE / objective."""
  c = exp.config
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  per_device = c.training.batch_size // exp.n_devices
  line = (f"score_jax {mode}: {exp.n_devices} x {'/'.join(kinds)} ({jax.default_backend()}, parallel="
          f"{exp.parallel_mode}, {jax.process_count()} host(s)) | batch {c.training.batch_size} ({per_device} per "
          f"device) | {exp.n_params:,} params | {_objective(exp)}{' bf16' if c.training.get('bf16', False) else ''} | "
          f"seed {c.seed}")
  return f"{line} | {extra}" if extra else line


def _as_dict(state: train.TrainState) -> dict:
  return dict(step=state.step, params=state.params, ema_params=state.ema_params, opt_state=state.opt_state)


def _checkpointer(exp: Experiment, workdir) -> checkpoints.Checkpointer:
  return checkpoints.Checkpointer.from_config(exp.config, workdir, template=_as_dict(exp.abstract_state))


def _score_fn(exp: Experiment, params):
  return models.get_score_fn(exp.sde, exp.model, {"params": params}, train=False, continuous=exp.continuous)


def _to_uint8(exp: Experiment, x) -> np.ndarray:
  x = datasets.inverse_scale(np.asarray(x, np.float32), bool(exp.config.data.centered))
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def make_sample_fn(exp: Experiment, batch_size: int):
  """``fn(params, key, offset) -> (samples [batch_size, H, W, C] float, nfe)`` with ``sampling.method``, jitted.

  Sample ``offset + b`` draws all its noise from ``fold_in(key, offset + b)``.
  """
  shape = (batch_size,) + exp.image_shape

  def fn(params, key, offset):
    return builders.build_sampler(exp.config, exp.sde, _score_fn(exp, params), shape)(key, offset)

  if exp.n_devices > 1 and batch_size % exp.n_devices == 0 and jax.process_count() == 1:
    mesh = parallel.make_mesh()
    out = (jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(parallel.AXIS_NAME)),
           jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    return jax.jit(fn, out_shardings=out)
  return jax.jit(fn)


# ---- TensorBoard and the JSON log ---------------------------------------------------------------------------


class _Writer:
  """TensorBoard (tensorboardX) scalars and images plus ``train_log.jsonl``; a no-op except on host 0."""

  def __init__(self, workdir: pathlib.Path, enabled: bool):
    self._tb = None
    self._log_path = workdir / "train_log.jsonl"
    self.enabled = enabled
    if enabled:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(str(workdir / "tensorboard"))

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if not self.enabled:
      return
    for name, value in values.items():
      self._tb.add_scalar(name, value, step)
    with open(self._log_path, "a") as f:
      f.write(json.dumps(dict(step=step, time=time.time(), **values)) + "\n")

  def image(self, step: int, name: str, grid: np.ndarray) -> None:
    if self.enabled:
      self._tb.add_image(name, grid, step, dataformats="HWC")

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


# ---- training ---------------------------------------------------------------------------------------------


def _crossed(before: int, after: int, freq: int) -> bool:
  """Whether a multiple of ``freq`` lies in ``(before, after]``."""
  return freq > 0 and after // freq > before // freq


def _abstract_batch(exp: Experiment):
  t = exp.config.training
  lead = (n_jitted_steps(exp.config), t.batch_size)
  images = jax.ShapeDtypeStruct(lead + exp.image_shape, jnp.float32)
  return (images, jax.ShapeDtypeStruct(lead, jnp.int32)) if exp.task == "classifier" else images


def _train_loss_fn(exp: Experiment):
  """The ``loss_fn`` of :func:`score_jax.train.make_train_step`: a classifier's cross-entropy, or None (the score
  objective of the config)."""
  if exp.task != "classifier":
    return None
  t = exp.config.training
  return classifier.make_loss_fn(exp.model, exp.sde, eps=t.get("eps", 1e-5), bf16=t.get("bf16", False))


def _eval_loss_fn(exp: Experiment):
  """``fn(params, inputs, key, offset) -> [B]`` per-example evaluation losses (jitted)."""
  if exp.task != "classifier":
    return jax.jit(train.make_eval_loss_fn(exp.config, exp.model, exp.sde))
  fn = classifier.make_eval_fn(exp.model, exp.sde, eps=exp.config.training.get("eps", 1e-5))
  return jax.jit(lambda params, inputs, key, offset: fn(params, inputs, key, offset)["loss"])


def _inputs(exp: Experiment, batch: dict):
  """What a step or an evaluation takes of a data batch: the images, and for a classifier (images, labels)."""
  if exp.task != "classifier":
    return batch["image"]
  classifier.check_labels(batch["label"], exp.config.classifier.num_classes, "a data batch")
  return batch["image"], batch["label"]


def _check_labelled(exp: Experiment, ds: datasets.Dataset, what: str) -> None:
  """A classifier's data must have labels, in ``[0, classifier.num_classes)`` (checked up front where the source
  holds them in memory, else batch by batch before each step)."""
  if exp.task != "classifier":
    return
  name = exp.config.data.dataset
  if not ds.has_labels:
    raise ValueError(f"the {what} of data.dataset={name!r} has no labels, which a classifier needs (an .npz with "
                     "'labels' [N], a folder of class subfolders, or a tfds dataset with a 'label' feature).")
  if ds.labels is not None:
    classifier.check_labels(ds.labels, exp.config.classifier.num_classes, f"the {what} of data.dataset={name!r}")


def dry_run(config: ml_collections.ConfigDict, workdir=None, *, check_data: bool = True,
            trace_step: bool = True, exp: Experiment | None = None) -> dict:
  """Build everything a training run needs and trace one fused train step, without computing or writing anything.

  Checks the config fields (:func:`check_config`), builds the network, SDE, objective, optimizer and sampler,
  traces ``training.n_jitted_steps`` fused steps on abstract arrays (``jax.eval_shape``: shapes only), opens
  the training data (``check_data``) and, when ``workdir`` already holds checkpoints, checks that they belong
  to this config. Raises the error a real run would raise first. ``trace_step=False`` skips the trace of the
  step (the slow part, 3 to 10 s for the full-size networks on a CPU), keeping the shapes of the initialisation.

  Returns:
    a summary: parameter count, devices, the data's size (or None), the checkpoint to resume from (or None).
  """
  exp = setup(config) if exp is None else exp  # ``exp``: a :func:`setup` of this config done before
  step_fn = train.make_train_step(config, exp.model, exp.sde, exp.optimizer, loss_fn=_train_loss_fn(exp))
  fused = train.make_fused_train_step(step_fn)
  if trace_step:
    jax.eval_shape(fused, exp.abstract_state, _abstract_batch(exp), jax.random.PRNGKey(0))
  if exp.task == "score":
    make_sample_fn(exp, 1)  # builds (traces lazily) the configured sampler
  num_examples = None
  if check_data:
    train_ds = datasets.get_dataset(config, "train", num_threads=1)
    _check_labelled(exp, train_ds, "training split")
    num_examples = len(train_ds)
  resume = None
  if workdir is not None and (pathlib.Path(workdir) / checkpoints.SUBDIR).is_dir():
    with _checkpointer(exp, workdir) as ckpts:
      ckpts.check_compatible()
      resume = ckpts.latest_step()
  return dict(n_params=exp.n_params, n_devices=exp.n_devices, parallel=exp.parallel_mode,
              train_examples=num_examples, resume_step=resume, summary=summary_line(exp, "dry run"))


def _nan_error(metrics, step: int, n: int, ckpts: checkpoints.Checkpointer) -> FloatingPointError | None:
  values = np.asarray(metrics["loss"])
  finite = np.isfinite(values)
  if finite.all():
    return None
  bad = step - n + int(np.argmin(finite)) + 1
  latest = ckpts.latest_step()
  where = f"{ckpts.directory / str(latest)} (step {latest})" if latest is not None else "none (no checkpoint yet)"
  return FloatingPointError(
      f"the training loss is {values[np.argmin(finite)]} at step {bad}; stopping without saving. Last good "
      f"checkpoint: {where}. Lower optim.lr or raise optim.warmup, or try training.bf16=False, and resume.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *, progress: bool = True,
                       step_lines: bool = False) -> dict:
  """Train ``config`` in ``workdir``, resuming from its newest valid checkpoint (``--mode train``).

  Every ``training.log_freq`` steps the mean loss and gradient norm of the steps since the last log go to
  TensorBoard and ``train_log.jsonl``; every ``training.eval_freq`` steps the loss of one evaluation batch
  (EMA parameters, no dropout); checkpoints as configured (:mod:`score_jax.checkpoints`), and at each
  periodic snapshot a grid of ``training.snapshot_num_samples`` samples when ``training.snapshot_sampling``.
  SIGTERM saves a checkpoint at the end of the current fused call and returns. A non-finite loss raises
  FloatingPointError naming the step and the last good checkpoint; nothing is saved after it.

  Training runs ``training.n_iters`` steps rounded down to a multiple of ``training.n_jitted_steps``.

  Args:
    step_lines: print ``step N`` after each fused call (for :func:`score_jax.checkpoints.run_with_kills`).

  Returns:
    a summary: final step, last logged loss, steps/s of this session, whether it stopped early.
  """
  exp = setup(config)
  t = config.training
  n = n_jitted_steps(config)
  n_iters = t.n_iters // n * n
  if n_iters == 0:
    raise ValueError(f"training.n_iters={t.n_iters} is less than training.n_jitted_steps={n}: nothing to train.")
  workdir = pathlib.Path(workdir)
  train_ds = datasets.get_dataset(config, "train")
  _check_labelled(exp, train_ds, "training split")
  eval_freq = int(t.get("eval_freq", 0) or 0)
  eval_ds = datasets.get_dataset(config, "eval") if eval_freq else None
  if eval_ds is not None:
    _check_labelled(exp, eval_ds, "evaluation split")
  mode = exp.parallel_mode
  ckpts = _checkpointer(exp, workdir)
  restored = ckpts.restore_latest()  # refuses another config's checkpoints before anything is written
  if restored is None:
    state = train.init_train_state(exp.key(STREAM_INIT), config, exp.model, exp.optimizer,
                                   init_label=classifier.INIT_SIGMA if exp.task == "classifier" else 0)
  else:
    state = train.TrainState(**restored)
  start = int(state.step)
  if start % n:
    raise ValueError(f"the checkpoint is at step {start}, not a multiple of training.n_jitted_steps={n}; resume "
                     f"with the n_jitted_steps it was trained with.")
  axis_name = parallel.AXIS_NAME if mode == "pmap" else None
  step_fn = train.make_train_step(config, exp.model, exp.sde, exp.optimizer, axis_name=axis_name,
                                  loss_fn=_train_loss_fn(exp))
  pstep = parallel.make_parallel_train_step(config, step_fn, mode)
  state = parallel.replicate(state, mode)
  train_key = exp.key(STREAM_TRAIN)
  is_main = jax.process_index() == 0
  workdir.mkdir(parents=True, exist_ok=True)
  writer = _Writer(workdir, enabled=is_main)
  eval_loss_fn = _eval_loss_fn(exp) if eval_freq else None
  sample_fn = None
  extra = f"steps {start} -> {n_iters} ({n} per call) | workdir {workdir}"
  line = summary_line(exp, "train", extra)
  log.info(line)
  print(line, flush=True)

  checkpoints.install_sigterm_handler()
  batches = train_ds.iterate(start)
  window: list[np.ndarray] = []
  window_norms: list[np.ndarray] = []
  last_loss, stopped = None, False
  t_session, t_window, step_window = time.time(), time.time(), start
  bar = tqdm(total=n_iters, initial=start, unit="step", disable=not (progress and is_main), dynamic_ncols=True,
             desc="train")
  try:
    step = start
    while step < n_iters:
      inputs = [_inputs(exp, next(batches)) for _ in range(n)]
      xs = jax.tree_util.tree_map(lambda *a: np.stack(a), *inputs)  # [n, B_host, H, W, C] (and labels [n, B_host])
      state, metrics = pstep(state, xs, train_key)
      step += n
      error = _nan_error(metrics, step, n, ckpts)
      if error is not None:
        raise error
      window.append(np.asarray(metrics["loss"]))
      window_norms.append(np.asarray(metrics["grad_norm"]))
      if _crossed(step - n, step, t.log_freq) or step == n_iters:
        now = time.time()
        last_loss = float(np.mean(np.concatenate(window)))
        values = dict(loss=last_loss, grad_norm=float(np.mean(np.concatenate(window_norms))),
                      steps_per_s=(step - step_window) / max(now - t_window, 1e-9))
        values["images_per_s"] = values["steps_per_s"] * t.batch_size
        writer.scalars(step, values)
        log.info("step %d: loss %.5g, grad norm %.4g, %.3g steps/s", step, values["loss"], values["grad_norm"],
                 values["steps_per_s"])
        window, window_norms, t_window, step_window = [], [], now, step
      if eval_freq and _crossed(step - n, step, eval_freq):
        host_state = parallel.unreplicate(state, mode)
        eval_loss = _eval_batch_loss(exp, eval_loss_fn, host_state.ema_params, eval_ds, step // eval_freq)
        writer.scalars(step, dict(eval_loss=eval_loss))
      stop = checkpoints.should_stop()
      host_state = parallel.unreplicate(state, mode)
      saved = ckpts.save(_as_dict(host_state), step, force=stop or step == n_iters)
      if saved and ckpts.is_snapshot(step) and t.get("snapshot_sampling", False):
        if sample_fn is None:
          sample_fn = make_sample_fn(exp, int(t.get("snapshot_num_samples", _GRID_MAX)))
        _write_snapshot(exp, sample_fn, host_state.ema_params, workdir, step, writer)
      bar.update(n)
      if last_loss is not None:
        bar.set_postfix(loss=f"{last_loss:.4g}", refresh=False)
      if step_lines:
        print(f"step {step}", flush=True)
      if stop:
        stopped = True
        log.info("SIGTERM: saved the checkpoint of step %d; exiting", step)
        break
  finally:
    bar.close()
    batches.close()
    writer.close()
    ckpts.close()
  seconds = time.time() - t_session
  return dict(step=int(step), n_iters=n_iters, loss=last_loss, steps_per_s=(step - start) / max(seconds, 1e-9),
              seconds=seconds, stopped_early=stopped, checkpoint_dir=str(ckpts.directory))


def _eval_batch_loss(exp: Experiment, eval_loss_fn, params, eval_ds: datasets.Dataset, index: int) -> float:
  index = index % eval_ds.num_eval_batches
  batch = eval_ds.eval_batch(index)
  offset = index * eval_ds.global_batch_size
  losses = np.asarray(eval_loss_fn(params, _inputs(exp, batch), exp.key(STREAM_EVAL), offset))
  return float(losses[batch["mask"]].mean())


def _write_snapshot(exp: Experiment, sample_fn, params, workdir: pathlib.Path, step: int, writer: _Writer) -> None:
  x, _ = sample_fn(params, jax.random.fold_in(exp.key(STREAM_SNAPSHOT), step), 0)
  images = _to_uint8(exp, x)
  if jax.process_index() != 0:
    return
  out = workdir / "snapshots" / f"step_{step}"
  out.mkdir(parents=True, exist_ok=True)
  grid = fileio.image_grid(images[:_GRID_MAX])
  fileio.savez(str(out / "samples.npz"), images=images)
  fileio.save_png(str(out / "grid.png"), grid)
  writer.image(step, "samples", grid)
  log.info("wrote %s", out / "grid.png")


# ---- loading parameters for eval and sample ---------------------------------------------------------------


_EVAL_ITEMS = ("ema_params", "step")  # what evaluation and sampling restore of a training state


def _load_params(exp: Experiment, workdir, checkpoint: str | None) -> tuple[Any, str, int | None]:
  """EMA parameters to evaluate or sample: ``(params, tag, step)``.

  ``checkpoint``: None (the newest valid checkpoint in ``workdir``), a step number, or the path of an original
  checkpoint converted with ``python -m score_jax.convert`` (its weights are the original's EMA weights).
  """
  if checkpoint not in (None, "", "latest") and not re.fullmatch(r"\d+", str(checkpoint)):
    from score_jax import convert

    path = pathlib.Path(checkpoint).expanduser()
    if checkpoint == ALL_CHECKPOINTS:
      raise ValueError(f"--checkpoint={ALL_CHECKPOINTS} applies to --mode eval (every checkpoint in turn); give a "
                       "step number or a converted checkpoint directory here.")
    if not path.is_dir():
      raise FileNotFoundError(f"--checkpoint={checkpoint!r} is neither a step number nor a converted checkpoint "
                              f"directory (python -m score_jax.convert ... writes one); --mode eval also takes "
                              f"--checkpoint={ALL_CHECKPOINTS}.")
    params = jax.tree_util.tree_map(jnp.asarray, convert.load_converted(path, exp.config)["params"])
    return params, f"converted_{path.name}", None
  directory = pathlib.Path(workdir) / checkpoints.SUBDIR
  if not directory.is_dir():
    raise FileNotFoundError(f"no checkpoints in {directory}: train first (--mode train), or pass --checkpoint=PATH "
                            "of an original checkpoint converted with python -m score_jax.convert.")
  with _checkpointer(exp, workdir) as ckpts:  # the EMA weights and the step only: no optimizer state is read
    if checkpoint in (None, "", "latest"):
      state = ckpts.restore_latest(items=_EVAL_ITEMS)
      if state is None:
        raise FileNotFoundError(f"no valid checkpoint in {directory} (see the warnings above).")
    else:
      state = ckpts.restore(int(checkpoint), items=_EVAL_ITEMS)
  step = int(state["step"])
  return state["ema_params"], f"step_{step}", step


# ---- evaluation -------------------------------------------------------------------------------------------


def _mean_se(values: np.ndarray) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
  return float(values.mean()), se


def _eval_limit(config: ml_collections.ConfigDict, ds: datasets.Dataset) -> tuple[int, int]:
  """(examples, batches) of one evaluation pass: ``eval.bpd_num_examples`` (0 = all) of the split."""
  cap = int(config.eval.get("bpd_num_examples", 0) or 0)
  count = min(cap, ds.num_examples) if cap else ds.num_examples
  return count, math.ceil(count / ds.global_batch_size)


def _inception_weights(config: ml_collections.ConfigDict) -> str:
  weights = config.eval.get("inception_weights", "") or os.environ.get("SCORE_JAX_INCEPTION_WEIGHTS", "")
  if not weights or not pathlib.Path(weights).is_file():
    raise FileNotFoundError(
        f"eval.enable_sampling needs the FID Inception weights: eval.inception_weights={weights!r} (or "
        "$SCORE_JAX_INCEPTION_WEIGHTS) must name the .npz converted from pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth with python -m score_jax.inception convert.")
  return weights


def evaluate(config: ml_collections.ConfigDict, workdir, *, checkpoint: str | None = None,
             progress: bool = True, feature_fn=None) -> dict:
  """Test-set loss and bits/dim of a checkpoint's EMA parameters (``--mode eval``), each with its standard error.

  - ``eval.enable_loss``: the training objective on the evaluation split (CIFAR-10 / SVHN test, CelebA / LSUN
    validation), network without dropout, per-example draws from the global index; mean and standard error
    over the examples.
  - ``eval.enable_bpd``: bits/dim of uniformly dequantized ``eval.bpd_dataset`` images from the probability-flow
    ODE (:func:`score_jax.likelihood.bits_per_dim`, Hutchinson-Rademacher trace, tolerances
    ``sampling.ode_rtol/atol``, from t = 1e-5), with the 8-bit offset (7 bits for centered data);
    ``eval.bpd_num_repeats`` passes with fresh dequantization noise; mean and standard error over all
    (example, pass) values.

  - ``eval.enable_sampling``: ``eval.num_samples`` samples drawn as by :func:`sample` (resumable chunks,
    per-sample seeds) with their Inception features extracted chunk by chunk as they are drawn (saved beside
    the chunks: a restart recomputes neither), then FID against ``eval.fid_stats`` (when set), Inception
    Score and, when the stats file holds ``pool_3`` features, KID
    (:func:`score_jax.eval.metrics_of_features`), with the FID Inception weights of ``eval.inception_weights``
    (``feature_fn`` replaces the network, e.g. in tests). The weights and the statistics are checked before
    any sample is drawn.

  ``eval.bpd_num_examples`` (0 = all) limits loss and bits/dim to the first examples of the split. The result
  is written, with the settings it depends on, to ``workdir/eval/<checkpoint>.json`` and TensorBoard, and
  returned. ``checkpoint='all'`` evaluates every checkpoint of ``workdir`` (:func:`_evaluate_all`).

  A classifier config (:func:`score_jax.builders.is_classifier`) reports test accuracy instead
  (:func:`_evaluate_classifier`).
  """
  if checkpoint == ALL_CHECKPOINTS:
    return _evaluate_all(config, workdir, progress=progress, feature_fn=feature_fn)
  if builders.is_classifier(config):
    return _evaluate_classifier(config, workdir, checkpoint=checkpoint, progress=progress)
  exp = setup(config)
  e = config.eval
  enable_loss, enable_bpd = bool(e.get("enable_loss", True)), bool(e.get("enable_bpd", False))
  enable_sampling = bool(e.get("enable_sampling", False))
  if not (enable_loss or enable_bpd or enable_sampling):
    raise ValueError("nothing to evaluate: set eval.enable_loss, eval.enable_bpd and/or eval.enable_sampling to True.")
  fid_stats = e.get("fid_stats", "") or None
  if enable_sampling:
    from score_jax import eval as sample_eval

    _positive_int(e.num_samples, "eval.num_samples")
    if feature_fn is None:
      feature_fn = sample_eval.inception_feature_fn(_inception_weights(config))
    reference_stats = sample_eval.load_reference_stats(fid_stats, feature_fn) if fid_stats else None  # before sampling
  eval_ds = datasets.get_dataset(config, "eval", num_threads=4) if enable_loss else None
  bpd_split = "train" if e.get("bpd_dataset", "test") == "train" else "eval"
  if enable_bpd:
    datasets.get_dataset(config, bpd_split, num_threads=1)  # fail on missing data before loading anything
  params, tag, step = _load_params(exp, workdir, checkpoint)
  line = summary_line(exp, "eval", f"checkpoint {tag}")
  log.info(line)
  print(line, flush=True)
  result: dict[str, Any] = dict(checkpoint=tag, step=step)
  t0 = time.time()
  if enable_loss:
    result.update(_eval_loss(exp, params, eval_ds, progress))
  if enable_bpd:
    result.update(_eval_bpd(exp, params, bpd_split, progress))
  if enable_sampling:
    drawn = _draw_samples(exp, params, tag, workdir, int(e.num_samples), progress=progress, feature_fn=feature_fn)
    result["samples"] = drawn["directory"]
    if jax.process_index() == 0:
      reference = None
      if fid_stats:
        with np.load(fid_stats) as f:
          reference = f["pool_3"] if "pool_3" in f.files else None
      features = load_features(drawn["features"], drawn["num_samples"])
      result.update(sample_eval.metrics_of_features(features, reference_stats=reference_stats,
                                                    reference_features=reference))
  result["seconds"] = time.time() - t0
  _write_eval(config, workdir, result, ("loss", "bpd", "fid", "inception_score", "kid"),
              feature_fn if enable_sampling else None)
  return result


def _eval_settings(config: ml_collections.ConfigDict, feature_fn=None) -> dict:
  """What an evaluation's numbers depend on besides the checkpoint (recorded with them; see :func:`_evaluate_all`).

  Besides the config sections: with ``feature_fn`` (sample metrics) its tag (the weights' sha256 for the FID
  Inception, wherever the weights were found) and the sha256 of the ``eval.fid_stats`` file, so that new weights
  or statistics rewritten at the same path count as other settings.
  """
  settings = dict(seed=int(config.seed), eval=config.eval.to_dict(), sampling=config.sampling.to_dict(),
                  data=config.data.to_dict())
  if feature_fn is not None:
    from score_jax import eval as sample_eval

    settings["features"] = sample_eval.feature_tag(feature_fn)
    stats = config.eval.get("fid_stats", "") or ""
    if stats:
      settings["fid_stats_sha256"] = fileio.sha256_file(stats)
  return json.loads(json.dumps(settings))


def _write_eval(config: ml_collections.ConfigDict, workdir, result: dict, scalars: Sequence[str],
                feature_fn=None) -> None:
  """``result`` with its settings to ``workdir/eval/<checkpoint>.json``, and ``scalars`` of it to TensorBoard."""
  result["settings"] = _eval_settings(config, feature_fn)
  if jax.process_index() != 0:
    return
  out = pathlib.Path(workdir) / "eval"
  out.mkdir(parents=True, exist_ok=True)
  fileio.write_json(str(out / f"{result['checkpoint']}.json"), result)
  writer = _Writer(pathlib.Path(workdir), enabled=True)
  writer.scalars(result["step"] or 0, {f"eval/{k}": result[k] for k in scalars if k in result})
  writer.close()


def _evaluate_all(config: ml_collections.ConfigDict, workdir, *, progress: bool, feature_fn=None) -> dict:
  """:func:`evaluate` of every checkpoint in ``workdir`` (``--checkpoint=all``), oldest first.

  The original evaluates its checkpoints ``eval.begin_ckpt`` to ``eval.end_ckpt`` in one job; here every
  checkpoint present is evaluated, each into its own ``eval/step_<N>.json`` and TensorBoard at its step (a
  curve of loss / bits/dim / FID over training). A checkpoint whose JSON already holds the same settings
  (:func:`_eval_settings`) is not evaluated again, and sampling resumes within a checkpoint, so a killed job
  restarts where it stopped. Corrupt checkpoints are skipped with a warning.
  """
  exp = setup(config)
  directory = pathlib.Path(workdir) / checkpoints.SUBDIR
  if not directory.is_dir():
    raise FileNotFoundError(f"--checkpoint={ALL_CHECKPOINTS}: no checkpoints in {directory}; train first "
                            "(--mode train).")
  with _checkpointer(exp, workdir) as ckpts:
    steps = ckpts.all_steps()
  if not steps:
    raise FileNotFoundError(f"--checkpoint={ALL_CHECKPOINTS}: no checkpoints in {directory}; train first.")
  sampling = bool(config.eval.get("enable_sampling", False)) and not builders.is_classifier(config)
  if feature_fn is None and sampling:
    from score_jax import eval as sample_eval

    feature_fn = sample_eval.inception_feature_fn(_inception_weights(config))  # loaded once for all checkpoints
  settings = _eval_settings(config, feature_fn if sampling else None)  # as evaluate() records them
  results, reused, skipped = [], 0, []
  for step in steps:
    saved = pathlib.Path(workdir) / "eval" / f"step_{step}.json"
    if saved.exists():
      found = json.loads(saved.read_text())
      if found.get("settings") == settings:
        results.append(found)
        reused += 1
        continue
    try:
      results.append(evaluate(config, workdir, checkpoint=str(step), progress=progress, feature_fn=feature_fn))
    except checkpoints.CheckpointCorruptError as e:
      log.warning("skipping corrupt checkpoint %s: %s", directory / str(step), e)
      skipped.append(step)
  return dict(checkpoints=[r["checkpoint"] for r in results], evaluated=len(results) - reused, reused=reused,
              skipped_corrupt=skipped, results=results)


def _eval_loss(exp: Experiment, params, ds: datasets.Dataset, progress: bool) -> dict:
  fn = jax.jit(train.make_eval_loss_fn(exp.config, exp.model, exp.sde))
  count, n_batches = _eval_limit(exp.config, ds)
  values = []
  for index in tqdm(range(n_batches), desc="eval loss", unit="batch", disable=not progress):
    batch = ds.eval_batch(index)
    offset = index * ds.global_batch_size
    positions = offset + np.arange(batch["image"].shape[0])
    mask = batch["mask"] & (positions < count)
    losses = np.asarray(fn(params, batch["image"], exp.key(STREAM_EVAL), offset))
    values.append(losses[mask])
  mean, se = _mean_se(np.concatenate(values))
  return dict(loss=mean, loss_se=se, loss_examples=count)


def _eval_bpd(exp: Experiment, params, split: str, progress: bool) -> dict:
  c = exp.config
  centered = bool(c.data.centered)
  kwargs = dict(data_min=-1.0 if centered else 0.0, data_max=1.0, rtol=c.sampling.ode_rtol, atol=c.sampling.ode_atol,
                eps=1e-5)

  @jax.jit
  def bpd_fn(params, x, key):
    bpd, _, nfe = likelihood.bits_per_dim(key, exp.sde, _score_fn(exp, params), x, **kwargs)
    return bpd, nfe

  ds = datasets.get_dataset(c, split, uniform_dequantization=True, num_threads=4)
  count, n_batches = _eval_limit(c, ds)
  repeats = int(c.eval.get("bpd_num_repeats", 1))
  values, nfes = [], []
  bar = tqdm(total=repeats * n_batches, desc="bits/dim", unit="batch", disable=not progress)
  for r in range(repeats):
    # each pass dequantizes with fresh noise: the dataset's dequantization stream is seeded per pass
    pass_ds = ds if r == 0 else datasets.get_dataset(c, split, seed=int(c.seed) + r, uniform_dequantization=True,
                                                      num_threads=4)
    for index in range(n_batches):
      batch = pass_ds.eval_batch(index)
      positions = index * ds.global_batch_size + np.arange(batch["image"].shape[0])
      mask = batch["mask"] & (positions < count)
      key = jax.random.fold_in(jax.random.fold_in(exp.key(STREAM_BPD), r), index)
      bpd, nfe = bpd_fn(params, batch["image"], key)
      values.append(np.asarray(bpd)[mask])
      nfes.append(int(nfe))
      bar.update(1)
      bar.set_postfix(bpd=f"{np.concatenate(values).mean():.4f}", refresh=False)
  bar.close()
  mean, se = _mean_se(np.concatenate(values))
  return dict(bpd=mean, bpd_se=se, bpd_examples=count, bpd_repeats=repeats, bpd_mean_nfe=float(np.mean(nfes)))


def _evaluate_classifier(config: ml_collections.ConfigDict, workdir, *, checkpoint: str | None,
                         progress: bool) -> dict:
  """Test accuracy and cross-entropy of a classifier's EMA parameters on perturbed test images (``--mode eval``).

  Each example ``i`` is classified at ``x_t = a(t) x + s(t) z`` with ``t ~ U(training.eps, T)`` drawn from
  the evaluation key and ``i`` (the training draws), so the numbers do not depend on the batching. Reported:
  accuracy and loss overall (mean and standard error over the examples) and accuracy in
  ``eval.num_noise_bins`` equal bins of ``t`` with the noise levels ``s(t)`` at their edges;
  ``eval.bpd_num_examples`` (0 = all) limits the examples. Written to ``workdir/eval/<checkpoint>.json``
  and TensorBoard.
  """
  exp = setup(config)
  n_bins = _positive_int(config.eval.get("num_noise_bins", _NOISE_BINS), "eval.num_noise_bins")
  if checkpoint not in (None, "", "latest") and not re.fullmatch(r"\d+", str(checkpoint)):
    raise ValueError(f"--checkpoint={checkpoint!r}: a classifier is evaluated from a step of its own --workdir "
                     "(converted original classifier checkpoints are not supported).")
  ds = datasets.get_dataset(config, "eval", num_threads=4)
  _check_labelled(exp, ds, "evaluation split")
  params, tag, step = _load_params(exp, workdir, checkpoint)
  line = summary_line(exp, "eval", f"checkpoint {tag}")
  log.info(line)
  print(line, flush=True)
  eps = config.training.get("eps", 1e-5)
  fn = jax.jit(classifier.make_eval_fn(exp.model, exp.sde, eps=eps))
  count, n_batches = _eval_limit(config, ds)
  t0 = time.time()
  parts: dict[str, list[np.ndarray]] = dict(loss=[], correct=[], t=[])
  for index in tqdm(range(n_batches), desc="eval accuracy", unit="batch", disable=not progress):
    batch = ds.eval_batch(index)
    offset = index * ds.global_batch_size
    mask = batch["mask"] & (offset + np.arange(batch["image"].shape[0]) < count)
    out = fn(params, _inputs(exp, batch), exp.key(STREAM_EVAL), offset)
    for name in parts:
      parts[name].append(np.asarray(out[name])[mask])
  loss, correct, t = (np.concatenate(parts[name]) for name in ("loss", "correct", "t"))
  accuracy, accuracy_se = _mean_se(correct.astype(np.float64))
  mean_loss, loss_se = _mean_se(loss)
  result: dict[str, Any] = dict(checkpoint=tag, step=step, accuracy=accuracy, accuracy_se=accuracy_se, loss=mean_loss,
                                loss_se=loss_se, examples=count,
                                bins=classifier.accuracy_by_bins(exp.sde, t, correct, eps=eps, n_bins=n_bins),
                                seconds=time.time() - t0)
  _write_eval(config, workdir, result, ("accuracy", "loss"))
  return result


# ---- sampling ---------------------------------------------------------------------------------------------


def _sample_meta(exp: Experiment, tag: str, chunk: int) -> dict:
  c = exp.config
  meta = dict(checkpoint=tag, seed=int(c.seed), sampling=c.sampling.to_dict(), model=c.model.to_dict(),
              image_shape=list(exp.image_shape), centered=bool(c.data.centered), chunk=chunk)
  return json.loads(json.dumps(meta))  # as it reads back from meta.json (tuples become lists)


def sample(config: ml_collections.ConfigDict, workdir, *, checkpoint: str | None = None,
           num_samples: int | None = None, progress: bool = True, feature_fn=None) -> dict:
  """Draw ``num_samples`` (default ``eval.num_samples``) samples with ``sampling.*`` (``--mode sample``).

  Samples are drawn in chunks of ``eval.batch_size`` and each chunk is saved (uint8 ``[n, H, W, C]`` in
  ``samples_<start>.npz``, written atomically) as soon as it is done, so a killed run resumes at the first
  missing chunk. Sample ``i`` draws its noise from ``fold_in(key, i)``: with the predictor-only or
  ``sampling.snr_reduction='per_example'`` PC samplers the samples do not depend on the chunk size or the
  device count; the original's Langevin step size (``snr_reduction='batch'``) averages gradient norms over
  the chunk, and the ODE sampler picks one step size per chunk, so there they change within those
  tolerances (the chunk size is recorded in ``meta.json`` and a resume must use the same one).

  With ``feature_fn`` (a :data:`score_jax.eval.FeatureFn`, e.g. the FID Inception-v3), each chunk's features
  are extracted on the fly from its uint8 images as soon as the chunk exists, and saved beside it
  (``features_<tag>/features_<start>.npz``: float32 ``pool3`` and ``logits``, ``tag`` from
  :func:`score_jax.eval.feature_tag`), so a restart recomputes neither samples nor features, and the metrics
  need no second pass over the images (:func:`load_features`).

  Args:
    checkpoint: None (newest), a step, or a converted original checkpoint (see :func:`_load_params`).

  Returns:
    a summary with the output directory, the number of samples and chunks, the NFE per sample, and with
    ``feature_fn`` the features directory and the number of feature chunks written.
  """
  if builders.is_classifier(config):
    raise ValueError("--mode sample needs a score-model config; a classifier config (with a 'classifier' section) has "
                     "nothing to sample.")
  exp = setup(config)
  num = _positive_int(num_samples or config.eval.num_samples, "num_samples (eval.num_samples)")
  params, tag, _ = _load_params(exp, workdir, checkpoint)
  return _draw_samples(exp, params, tag, workdir, num, progress=progress, feature_fn=feature_fn)


def _draw_samples(exp: Experiment, params, tag: str, workdir, num: int, *, progress: bool, feature_fn) -> dict:
  """:func:`sample` with the parameters loaded (``tag`` names their checkpoint)."""
  config = exp.config
  chunk = int(config.eval.batch_size)
  out = pathlib.Path(workdir) / "samples" / f"{tag}_{config.sampling.method}"
  meta = _sample_meta(exp, tag, chunk)
  meta_path = out / "meta.json"
  if meta_path.exists():
    found = json.loads(meta_path.read_text())
    changed = sorted(k for k in set(meta) | set(found) if meta.get(k) != found.get(k))
    if changed:
      raise ValueError(f"{out} holds samples drawn with other settings ({', '.join(changed)} differ); use another "
                       f"--workdir or move that folder away. Nothing was overwritten.")
  if jax.process_index() == 0:
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_json(str(meta_path), meta)
  line = summary_line(exp, "sample", f"{num} samples in chunks of {chunk} with {config.sampling.method} | {out}")
  log.info(line)
  print(line, flush=True)
  # features are extracted where the chunks are written (process 0); the metrics are computed there too
  features_dir = None
  if feature_fn is not None and jax.process_index() == 0:
    from score_jax import eval as sample_eval

    features_dir = out / f"{FEATURES_PREFIX}{sample_eval.feature_tag(feature_fn)}"
    features_dir.mkdir(exist_ok=True)
  key = exp.key(STREAM_SAMPLE)
  sample_fn = None
  written = reused = features_written = 0
  nfe = None
  t0 = time.time()
  starts = range(0, num, chunk)
  for start in tqdm(starts, desc="sample", unit="chunk", disable=not progress):
    count = min(chunk, num - start)
    path = out / f"samples_{start:07d}.npz"
    images = None
    if _valid_chunk(path, count, exp.image_shape):
      reused += 1
    else:
      if sample_fn is None:
        sample_fn = make_sample_fn(exp, chunk)
      x, nfe_chunk = sample_fn(params, key, start)
      images = _to_uint8(exp, x)[:count]
      nfe = int(nfe_chunk)
      if jax.process_index() == 0:
        fileio.savez(str(path), images=images, index=np.arange(start, start + count))
      written += 1
    if features_dir is not None:
      features_written += _chunk_features(features_dir, start, count, path, images, feature_fn,
                                          batch_size=min(chunk, _FEATURE_BATCH))
  images = load_samples(out, limit=_GRID_MAX)
  if jax.process_index() == 0:
    fileio.save_png(str(out / "grid.png"), fileio.image_grid(images))
  result = dict(directory=str(out), num_samples=num, chunks_written=written, chunks_reused=reused,
                nfe_per_sample=nfe, seconds=time.time() - t0)
  if features_dir is not None:
    result.update(features=str(features_dir), feature_chunks_written=features_written)
  return result


def _features_path(features_dir: pathlib.Path, start: int) -> pathlib.Path:
  return features_dir / f"features_{start:07d}.npz"


def _images_digest(images: np.ndarray) -> str:
  """sha256 of a chunk's uint8 images (shape and bytes): ties stored features to the images they came from."""
  images = np.ascontiguousarray(images)
  return hashlib.sha256(repr(images.shape).encode() + images.tobytes()).hexdigest()


def _valid_features(path: pathlib.Path, count: int, digest: str) -> bool:
  """Whether ``path`` holds the features of ``count`` images whose :func:`_images_digest` is ``digest``."""
  if not path.exists():
    return False
  try:
    with np.load(path) as f:
      if len(f["pool3"]) != count or len(f["logits"]) != count:
        return False
      found = str(f["images_sha256"]) if "images_sha256" in f.files else None
  except Exception as e:  # a truncated or foreign file: redo the chunk's features
    log.warning("redoing unreadable features %s (%s)", path, e)
    return False
  if found != digest:  # the chunk was replaced by other images (or the file predates the digest)
    log.warning("redoing %s: its features are not those of the images in the sample chunk now", path)
    return False
  return True


def _chunk_features(features_dir: pathlib.Path, start: int, count: int, samples_path: pathlib.Path,
                    images: np.ndarray | None, feature_fn, *, batch_size: int) -> int:
  """Features of one sample chunk, unless already saved for these very images: 1 if they were computed and
  written, else 0. The file records the images' sha256 (:func:`_images_digest`), so features are never reused
  for a chunk whose images changed."""
  from score_jax import eval as sample_eval

  path = _features_path(features_dir, start)
  if images is None:  # a chunk already on disk (this run's resume, or another run's samples)
    with np.load(samples_path) as f:
      images = f["images"]
  digest = _images_digest(images)
  if _valid_features(path, count, digest):
    return 0
  feats = sample_eval.features_of([images], feature_fn, batch_size=batch_size, progress=False)
  fileio.savez(str(path), pool3=feats["pool3"].astype(np.float32), logits=feats["logits"].astype(np.float32),
               index=np.arange(start, start + count), images_sha256=np.asarray(digest))
  return 1


def sample_features(samples_dir, feature_fn, *, limit: int | None = None, batch_size: int = _FEATURE_BATCH,
                    progress: bool = True) -> tuple[dict[str, np.ndarray], int]:
  """The features of the first ``limit`` (default: all) samples of a ``--mode sample`` directory, extracted
  chunk by chunk and stored beside the chunks as ``--mode eval`` stores them
  (``features_<tag>/features_<start>.npz``), so that features already there for the same images and the same
  network are read instead of recomputed.

  Returns:
    ``({'pool3': [N, D], 'logits': [N, K]} float64, the number of chunks whose features were computed)``.

  Raises:
    FileNotFoundError: no ``samples_*.npz`` chunks in ``samples_dir``.
    ValueError: the chunks do not follow each other (a chunk is missing).
  """
  from score_jax import eval as sample_eval

  directory = pathlib.Path(samples_dir)
  paths = _chunk_paths(directory)
  features_dir = directory / f"{FEATURES_PREFIX}{sample_eval.feature_tag(feature_fn)}"
  features_dir.mkdir(exist_ok=True)
  seen = written = 0
  for path in tqdm(paths, desc="features", unit="chunk", disable=not progress):
    if limit is not None and seen >= limit:
      break
    with np.load(path) as f:
      images = f["images"]
      start = int(f["index"][0]) if "index" in f.files and len(f["index"]) else seen
    if start != seen:
      raise ValueError(f"{path} starts at sample {start}, but the chunks before it hold {seen} samples: a chunk is "
                       "missing (rerun --mode sample with the same settings to draw it).")
    written += _chunk_features(features_dir, start, len(images), path, images, feature_fn, batch_size=batch_size)
    seen += len(images)
  total = seen if limit is None else min(seen, limit)
  if total == 0:
    raise ValueError(f"the sample chunks in {directory} hold no images.")
  return load_features(features_dir, total), written


def load_features(features_dir, num_samples: int) -> dict[str, np.ndarray]:
  """The pool3 features and logits of the first ``num_samples`` samples, from the chunks :func:`sample` saved
  in ``features_dir`` (float64 ``[N, D]`` / ``[N, K]``, in sample order)."""
  paths = sorted(pathlib.Path(features_dir).glob("features_*.npz"))
  parts: dict[str, list[np.ndarray]] = dict(pool3=[], logits=[])
  seen = 0
  for path in paths:
    if seen >= num_samples:
      break
    with np.load(path) as f:
      if int(f["index"][0]) != seen:
        raise ValueError(f"{path}: features of sample {int(f['index'][0])} where sample {seen} was expected; "
                         f"delete {features_dir} to extract them again.")
      take = min(len(f["index"]), num_samples - seen)
      for name in parts:
        parts[name].append(np.asarray(f[name][:take], np.float64))
    seen += take
  if seen < num_samples:
    raise ValueError(f"{features_dir} holds features of {seen} samples; {num_samples} were asked for.")
  return {name: np.concatenate(values) for name, values in parts.items()}


def _valid_chunk(path: pathlib.Path, count: int, image_shape) -> bool:
  if not path.exists():
    return False
  try:
    with np.load(path) as f:
      return f["images"].shape == (count,) + tuple(image_shape) and f["images"].dtype == np.uint8
  except Exception as e:  # a truncated or foreign file: redo the chunk
    log.warning("redoing unreadable chunk %s (%s)", path, e)
    return False


def _chunk_paths(directory: pathlib.Path) -> list[pathlib.Path]:
  paths = sorted(pathlib.Path(directory).glob("samples_*.npz"))
  if not paths:
    raise FileNotFoundError(f"no samples_*.npz chunks in {directory} (python -m score_jax.main --mode sample writes "
                            "them).")
  return paths


def sample_chunks(directory, limit: int | None = None):
  """The uint8 chunks ``[n, H, W, C]`` of a ``--mode sample`` directory in index order, up to ``limit`` samples."""
  seen = 0
  for path in _chunk_paths(directory):
    with np.load(path) as f:
      images = f["images"]
    if limit is not None:
      images = images[:max(0, limit - seen)]
    seen += len(images)
    if len(images):
      yield images
    if limit is not None and seen >= limit:
      return


def load_samples(directory, limit: int | None = None) -> np.ndarray:
  """The uint8 samples ``[N, H, W, C]`` of a ``--mode sample`` directory, in index order (up to ``limit``)."""
  return np.concatenate(list(sample_chunks(directory, limit)))
