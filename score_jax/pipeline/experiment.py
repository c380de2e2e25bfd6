"""The parts of a run built from its config, and what every mode of the pipeline needs from them.

:func:`setup` checks a config and builds its network, SDE and optimizer (the training state only as shapes);
:func:`load_params` gives the EMA parameters of a checkpoint (of the run, or converted from an original);
:func:`score_fn`, :func:`make_sample_fn` and :func:`to_uint8` turn them into scores, samples and images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import pathlib
import re
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_jax import (
  builders,
  checkpoints,
  classifier,
  conditional,
  convert,
  datasets,
  fileio,
  models,
  parallel,
  progress,
  randomness,
  sde_lib,
  train,
  validation,
)

__all__ = ["Experiment", "setup", "check_config", "n_jitted_steps", "summary_line", "checkpointer",
           "score_fn", "sampling_score_fn", "to_uint8", "make_sample_fn", "load_params", "announce", "GRID_MAX",
           "ALL_CHECKPOINTS",
           "EVAL_ITEMS", "load_classifier", "compiling",
           "save_grid", "VIEW_SCALE"]

log = logging.getLogger("score_jax")

GRID_MAX = 64  # images in a PNG grid
VIEW_SCALE = 4  # the upscaled copy of each grid (save_grid)
ALL_CHECKPOINTS = "all"  # --mode eval --checkpoint=all: every checkpoint of the workdir
EVAL_ITEMS = ("ema_params", "step")  # what evaluation and sampling restore of a training state


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
    """The key of a run stream of :mod:`score_jax.randomness` (``randomness.TRAIN``, ...)."""
    return randomness.run_key(self.config.seed, stream)


def n_jitted_steps(config: ml_collections.ConfigDict):
  """``training.n_jitted_steps``; 1 where a config has none (the original's standalone CelebA-HQ / FFHQ configs)."""
  return config.training.get("n_jitted_steps", 1)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raise ValueError naming the field for settings the image pipeline cannot run, before any work."""
  if not builders.is_classifier(config) and not config.get("model", {}).get("name"):
    raise ValueError("model.name is not set: configs/default_*_configs.py hold shared defaults, not an experiment; "
                     "use an experiment config such as configs/ve/cifar10_ncsnpp_continuous.py.")
  t = config.training
  validation.check_int(config.get("seed", None), "seed", minimum=0)
  n = validation.check_int(n_jitted_steps(config), "training.n_jitted_steps")
  validation.check_int(t.batch_size, "training.batch_size")
  validation.check_int(t.n_iters, "training.n_iters")
  validation.check_int(t.log_freq, "training.log_freq")
  validation.check_int(t.get("eval_freq", 0), "training.eval_freq", minimum=0)
  for name in ("snapshot_freq", "snapshot_freq_for_preemption"):
    value = validation.check_int(t.get(name, 0), f"training.{name}", minimum=0)
    if value % n:
      raise ValueError(f"training.{name}={value} is not a multiple of training.n_jitted_steps={n}: checkpoints are "
                       f"written between fused calls of {n} steps, so this one would never fall due. Use a multiple "
                       f"of {n} (e.g. {max(n, value // n * n)}).")
  validation.check_int(t.get("keep_snapshots", 0), "training.keep_snapshots", minimum=0)
  validation.check_int(t.get("snapshot_num_samples", GRID_MAX), "training.snapshot_num_samples")
  if t.get("parallel", "jit") not in parallel.MODES:
    raise ValueError(f"training.parallel={t.parallel!r}; expected one of {list(parallel.MODES)}.")
  if not builders.is_classifier(config):
    builders.sampler_settings(config)  # sampling.method and the fields it reads
    conditional.label_dropout(config)  # and a class-conditional model's labels and guidance
    conditional.guidance_settings(config)
  e = config.eval
  validation.check_int(e.batch_size, "eval.batch_size")
  validation.check_int(e.num_samples, "eval.num_samples")
  validation.check_int(e.get("bpd_num_repeats", 1), "eval.bpd_num_repeats")
  validation.check_int(e.get("bpd_num_examples", 0), "eval.bpd_num_examples", minimum=0)
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
  k = conditional.label_dim(c)
  classes = f" ({k} classes, label dropout {conditional.label_dropout(c):g})" if k else ""
  return f"{c.model.name}{classes} {type(exp.sde).__name__} {train.loss_kind(c, exp.sde)}"


def summary_line(exp: Experiment, mode: str, extra: str = "", batch_size: int | None = None) -> str:
  """One line: devices, batch (``batch_size``, default the training batch), parameter count, model / SDE /
  objective."""
  c = exp.config
  kinds = sorted({d.device_kind for d in jax.devices()})
  batch = int(c.training.batch_size if batch_size is None else batch_size)
  per_device = f"{batch // exp.n_devices} per device" if batch % exp.n_devices == 0 else f"{exp.n_devices} devices"
  line = (f"score_jax {mode}: {exp.n_devices} x {'/'.join(kinds)} ({jax.default_backend()}, parallel="
          f"{exp.parallel_mode}, {jax.process_count()} host(s)) | batch {batch} ({per_device}) | {exp.n_params:,} "
          f"params | {_objective(exp)}{' bf16' if c.training.get('bf16', False) else ''} | seed {c.seed}")
  return f"{line} | {extra}" if extra else line


def save_grid(path, grid: np.ndarray) -> None:
  """A PNG grid at ``path`` (native size) and beside it ``<name>_x4.png``, upscaled x4 by nearest neighbour for
  viewing (a 32-px CIFAR-10 grid is about 140 px wide)."""
  path = pathlib.Path(path)
  fileio.save_png(str(path), grid)
  big = np.repeat(np.repeat(grid, VIEW_SCALE, axis=0), VIEW_SCALE, axis=1)
  fileio.save_png(str(path.with_name(f"{path.stem}_x{VIEW_SCALE}{path.suffix}")), big)


@contextlib.contextmanager
def compiling(what: str, enabled: bool = True) -> Iterator[None]:
  """Log ``compiling WHAT ...`` before the first call of a jitted program and its time after (the block must
  wait for the result): the first step, chunk or batch of a run is mostly compilation (30-40 s on a CPU)."""
  if not enabled:
    yield
    return
  log.info("compiling %s ...", what)
  t0 = time.time()
  yield
  log.info("compiled %s and ran it once in %.1f s", what, time.time() - t0)


def announce(line: str) -> None:
  """A run's summary line, once: printed on host 0 (the log gets it at DEBUG level)."""
  log.debug(line)
  if jax.process_index() == 0:
    print(line, flush=True)


def checkpointer(exp: Experiment, workdir) -> checkpoints.Checkpointer:
  """The :class:`score_jax.checkpoints.Checkpointer` of ``workdir`` for this experiment's state."""
  return checkpoints.Checkpointer.from_config(exp.config, workdir, template=exp.abstract_state.to_dict())


def score_fn(exp: Experiment, params, class_labels=None, guidance: float = 1.0):
  """The score of the network with ``params`` (evaluation mode), ``score_fn(x [B, ...], t [B])``.

  A class-conditional model (``model.label_dim > 0``) scores the classes ``class_labels [B]`` (None: the null
  class, i.e. its unconditional score) with classifier-free guidance weight ``guidance``
  (:func:`score_jax.conditional.guided_score_fn`).
  """
  variables = {"params": params}
  k = conditional.label_dim(exp.config) if exp.task == "score" else 0
  if class_labels is not None and not k:
    raise ValueError("class_labels given for an unconditional model (model.label_dim=0).")
  if class_labels is None:  # unconditional, or a conditional model's null class
    return models.get_score_fn(exp.sde, exp.model, variables, train=False, continuous=exp.continuous)
  return conditional.guided_score_fn(exp.sde, exp.model, variables, class_labels, guidance, k, exp.continuous)


def sampling_score_fn(exp: Experiment, params, key, batch_size: int, offset):
  """``(score_fn, calls)``: the score the samplers use for the samples ``offset + arange(batch_size)`` drawn with
  ``key``, and the network calls per score evaluation (multiply a sampler's NFE by it).

  Unconditional models: their score, 1 call. Class-conditional ones: the classes of ``sampling.class_label``
  (random ones drawn per sample, :func:`score_jax.conditional.sample_class_labels`) guided with
  ``sampling.guidance`` (2 calls for a weight other than 0 and 1).
  """
  g = conditional.guidance_settings(exp.config)
  if not g["label_dim"]:
    return score_fn(exp, params), 1
  labels = conditional.sample_class_labels(key, batch_size, offset, g["label_dim"], g["class_label"])
  return score_fn(exp, params, labels, g["guidance"]), conditional.network_calls_per_score(g["guidance"])


def to_uint8(exp: Experiment, x) -> np.ndarray:
  """Samples in the model's data range as uint8 images ``[B, H, W, C]`` (the data's inverse scaling; values that
  are not finite become 0, which the callers report: sampling refuses such chunks, snapshots warn)."""
  x = np.asarray(x, np.float32)
  x = datasets.inverse_scale(np.where(np.isfinite(x), x, 0.0), bool(exp.config.data.centered))
  return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def make_sample_fn(exp: Experiment, batch_size: int, count_progress: bool = False, build_sampler=None):
  """``fn(params, key, offset) -> (samples [batch_size, H, W, C] float, nfe)`` with ``sampling.method``, jitted.

  Sample ``offset + b`` draws all its noise (and its class, for a class-conditional model with
  ``sampling.class_label=-1``) from ``fold_in(key, offset + b)``. ``nfe`` counts network evaluations (2 per
  score with classifier-free guidance). ``count_progress``: every network evaluation advances the active
  :func:`score_jax.progress.bar` (one host callback each; the samples are unchanged). ``build_sampler``:
  ``(config, sde, score_fn, shape) -> sample(key, offset)``, default :func:`score_jax.builders.build_sampler`
  (``python -m score_jax.ablate`` passes its own, which gives every method the same prior draws).
  """
  build_sampler = builders.build_sampler if build_sampler is None else build_sampler
  shape = (batch_size,) + exp.image_shape

  def fn(params, key, offset):
    scores, calls = sampling_score_fn(exp, params, key, batch_size, offset)
    if count_progress:
      scores = progress.count_calls(scores, weight=calls)
    x, nfe = build_sampler(exp.config, exp.sde, scores, shape)(key, offset)
    return x, nfe * calls

  if exp.n_devices > 1 and batch_size % exp.n_devices == 0 and jax.process_count() == 1:
    return jax.jit(fn, out_shardings=parallel.batch_and_replicated_shardings())
  return jax.jit(fn)


def load_params(exp: Experiment, workdir, checkpoint: str | None) -> tuple[Any, str, int | None]:
  """EMA parameters to evaluate or sample: ``(params, tag, step)``.

  ``checkpoint``: None (the newest checkpoint in ``workdir``; CheckpointCorruptError if it is corrupt), a step
  number, or the path of an original
  checkpoint converted with ``python -m score_jax.convert`` (its weights are the original's EMA weights).
  """
  if checkpoint not in (None, "", "latest") and not re.fullmatch(r"\d+", str(checkpoint)):
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
  with checkpointer(exp, workdir) as ckpts:  # the EMA weights and the step only: no optimizer state is read
    if checkpoint in (None, "", "latest"):
      steps = ckpts.all_steps()
      if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}: train first (--mode train).")
      try:  # the newest, verified: a damaged one is an error here, never silently replaced by an older one
        state = ckpts.restore(steps[-1], items=EVAL_ITEMS)
      except checkpoints.CheckpointCorruptError as e:
        raise checkpoints.CheckpointCorruptError(
            f"{e}. The newest checkpoint is corrupt: pass --checkpoint=STEP for an earlier one (present: "
            f"{steps[:-1]}), or resume training, which skips it.") from e
    else:
      state = ckpts.restore(int(checkpoint), items=EVAL_ITEMS)
  step = int(state["step"])
  return state["ema_params"], f"step_{step}", step


def load_classifier(config: ml_collections.ConfigDict, workdir, checkpoint: str | None = None):
  """The classifier of a classifier run: ``(model, {"params": ema_params}, sde)`` for
  :func:`score_jax.classifier.make_log_prob_grad_fn`.

  Args:
    config: the classifier config it was trained with (``configs/classifier/...``).
    workdir: its ``--workdir``.
    checkpoint: None (the newest checkpoint) or a step number.
  """
  if not builders.is_classifier(config):
    raise ValueError("load_classifier needs a classifier config (with a 'classifier' section, configs/classifier/); "
                     f"got model.name={config.get('model', {}).get('name')!r}.")
  exp = setup(config)
  params, _, _ = load_params(exp, workdir, checkpoint)
  return exp.model, {"params": params}, exp.sde
