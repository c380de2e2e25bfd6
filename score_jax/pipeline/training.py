"""The training loop of ``--mode train`` (score models and noise-conditional classifiers), and its dry run."""

from __future__ import annotations

import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from score_jax import builders, checkpoints, classifier, conditional, datasets, fileio, parallel, randomness, train
from score_jax.pipeline import experiment
from score_jax.pipeline import workdir as workdir_lib
from score_jax.pipeline.experiment import Experiment
from score_jax.pipeline.writer import MetricWriter

__all__ = ["train_and_evaluate", "dry_run", "check_labelled", "model_inputs"]

log = logging.getLogger("score_jax")


def _crossed(before: int, after: int, freq: int) -> bool:
  """Whether a multiple of ``freq`` lies in ``(before, after]``."""
  return freq > 0 and after // freq > before // freq


def _label_classes(exp: Experiment) -> tuple[int, str] | None:
  """``(number of classes, its config field)`` of a model trained on labels (a classifier or a class-conditional
  score model), or None."""
  if exp.task == "classifier":
    return int(exp.config.classifier.num_classes), "classifier.num_classes"
  k = conditional.label_dim(exp.config)
  return (k, "model.label_dim") if k else None


def _abstract_batch(exp: Experiment):
  t = exp.config.training
  lead = (experiment.n_jitted_steps(exp.config), t.batch_size)
  images = jax.ShapeDtypeStruct(lead + exp.image_shape, jnp.float32)
  return (images, jax.ShapeDtypeStruct(lead, jnp.int32)) if _label_classes(exp) else images


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


def model_inputs(exp: Experiment, batch: dict):
  """What a step or an evaluation takes of a data batch: the images, and for a classifier or a class-conditional
  score model (images, labels)."""
  classes = _label_classes(exp)
  if classes is None:
    return batch["image"]
  if "label" not in batch:
    raise ValueError(f"a data batch of data.dataset={exp.config.data.dataset!r} has no labels, which {classes[1]}="
                     f"{classes[0]} needs.")
  classifier.check_labels(batch["label"], classes[0], "a data batch", field=classes[1])
  return batch["image"], batch["label"]


def check_labelled(exp: Experiment, ds: datasets.Dataset, what: str) -> None:
  """A classifier's or a class-conditional model's data must have labels, in ``[0, num_classes)`` (checked up
  front where the source holds them in memory, else batch by batch before each step)."""
  classes = _label_classes(exp)
  if classes is None:
    return
  name = exp.config.data.dataset
  who = "a classifier" if exp.task == "classifier" else f"a class-conditional model ({classes[1]}={classes[0]})"
  if not ds.has_labels:
    raise ValueError(f"the {what} of data.dataset={name!r} has no labels, which {who} needs (an .npz with "
                     "'labels' [N], a folder of class subfolders, or a tfds dataset with a 'label' feature).")
  if ds.labels is not None:
    classifier.check_labels(ds.labels, classes[0], f"the {what} of data.dataset={name!r}", field=classes[1])


def dry_run(config: ml_collections.ConfigDict, workdir=None, *, check_data: bool = True,
            trace_step: bool = True, exp: Experiment | None = None) -> dict:
  """Build everything a training run needs and trace one fused train step, without computing or writing anything.

  Checks the config fields (:func:`score_jax.pipeline.experiment.check_config`), builds the network, SDE,
  objective, optimizer and sampler, traces ``training.n_jitted_steps`` fused steps on abstract arrays
  (``jax.eval_shape``: shapes only), opens the training data (``check_data``) and, when ``workdir`` already holds
  checkpoints, checks that they belong to this config. Raises the error a real run would raise first.
  ``trace_step=False`` skips the trace of the step (the slow part, 3 to 10 s for the full-size networks on a
  CPU), keeping the shapes of the initialisation.

  Returns:
    a summary: parameter count, devices, the data's size (or None), the checkpoint to resume from (or None).
  """
  exp = experiment.setup(config) if exp is None else exp  # ``exp``: a setup() of this config done before
  step_fn = train.make_train_step(config, exp.model, exp.sde, exp.optimizer, loss_fn=_train_loss_fn(exp))
  fused = train.make_fused_train_step(step_fn)
  if trace_step:
    jax.eval_shape(fused, exp.abstract_state, _abstract_batch(exp), jax.random.PRNGKey(0))
  if exp.task == "score":
    experiment.make_sample_fn(exp, 1)  # builds (traces lazily) the configured sampler
  num_examples = None
  if check_data:
    train_ds = datasets.get_dataset(config, "train", num_threads=1)
    check_labelled(exp, train_ds, "training split")
    num_examples = len(train_ds)
  resume = None
  if workdir is not None and (pathlib.Path(workdir) / checkpoints.SUBDIR).is_dir():
    # the checkpointer cleans up unfinished saves: not while another process writes them
    with workdir_lib.lock(workdir, "train --dry_run", enabled=jax.process_index() == 0), \
        experiment.checkpointer(exp, workdir) as ckpts:
      ckpts.check_compatible()
      resume = ckpts.latest_step()
  return dict(n_params=exp.n_params, n_devices=exp.n_devices, parallel=exp.parallel_mode,
              train_examples=num_examples, resume_step=resume, summary=experiment.summary_line(exp, "dry run"))


def _nan_error(metrics, step: int, n: int, ckpts: checkpoints.Checkpointer,
               last_good: int | None) -> FloatingPointError | None:
  """The error of a non-finite loss, naming ``last_good``: the checkpoint this session restored (verified against
  its digests) or saved last, never merely the newest directory."""
  values = np.asarray(metrics["loss"])
  finite = np.isfinite(values)
  if finite.all():
    return None
  bad = step - n + int(np.argmin(finite)) + 1
  where = (f"{ckpts.directory / str(last_good)} (step {last_good})" if last_good is not None
           else "none (no checkpoint yet)")
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
  SIGTERM saves a checkpoint at the end of the current fused call and returns (every host agrees on the stop,
  :func:`score_jax.parallel.agree_on_stop`). A non-finite loss raises FloatingPointError naming the step and
  the last good checkpoint (the one restored, which verified against its digests, or the last one saved); nothing
  is saved after it. Corrupt checkpoints (:class:`score_jax.checkpoints.CheckpointCorruptError`: partial, or
  arrays that differ from the digests recorded at save) are skipped with a warning naming them.

  Training runs ``training.n_iters`` steps rounded down to a multiple of ``training.n_jitted_steps``.

  Args:
    step_lines: print ``step N`` after each fused call (for the kill-and-resume tests).

  Returns:
    a summary: final step, last logged loss, steps/s of this session, whether it stopped early.

  Raises:
    WorkdirLockedError: another process writes ``workdir`` (:func:`score_jax.pipeline.workdir.lock`).
  """
  with workdir_lib.lock(workdir, "train", enabled=jax.process_index() == 0):  # before anything else: fails fast
    return _train(experiment.setup(config), workdir, progress=progress, step_lines=step_lines)


def _train(exp: Experiment, workdir, *, progress: bool, step_lines: bool) -> dict:
  config = exp.config
  t = config.training
  n = experiment.n_jitted_steps(config)
  n_iters = t.n_iters // n * n
  if n_iters == 0:
    raise ValueError(f"training.n_iters={t.n_iters} is less than training.n_jitted_steps={n}: nothing to train.")
  workdir = pathlib.Path(workdir)
  train_ds = datasets.get_dataset(config, "train")
  check_labelled(exp, train_ds, "training split")
  eval_freq = int(t.get("eval_freq", 0) or 0)
  eval_ds = datasets.get_dataset(config, "eval") if eval_freq else None
  if eval_ds is not None:
    check_labelled(exp, eval_ds, "evaluation split")
  mode = exp.parallel_mode
  ckpts = experiment.checkpointer(exp, workdir)
  restored = ckpts.restore_latest()  # refuses another config's checkpoints before anything is written
  if restored is None:
    state = train.init_train_state(exp.key(randomness.INIT), config, exp.model, exp.optimizer,
                                   init_label=classifier.INIT_SIGMA if exp.task == "classifier" else 0)
  else:
    state = train.TrainState(**restored)
  start = int(state.step)
  last_good = None if restored is None else start  # restore_latest verified it
  if start % n:
    raise ValueError(f"the checkpoint is at step {start}, not a multiple of training.n_jitted_steps={n}; resume "
                     f"with the n_jitted_steps it was trained with.")
  if start >= n_iters:  # said, rather than a summary with "loss": null
    ckpts.close()
    experiment.announce(f"score_jax train: {workdir} is already trained to step {start} (training.n_iters="
                        f"{t.n_iters}): nothing to do. Raise training.n_iters to train further.")
    return dict(step=start, n_iters=n_iters, loss=None, steps_per_s=0.0, seconds=0.0, stopped_early=False,
                checkpoint_dir=str(ckpts.directory), finished=True)
  axis_name = parallel.AXIS_NAME if mode == "pmap" else None
  step_fn = train.make_train_step(config, exp.model, exp.sde, exp.optimizer, axis_name=axis_name,
                                  loss_fn=_train_loss_fn(exp))
  pstep = parallel.make_parallel_train_step(config, step_fn, mode)
  state = parallel.replicate(state, mode)
  train_key = exp.key(randomness.TRAIN)
  workdir.mkdir(parents=True, exist_ok=True)
  writer = MetricWriter(workdir, resume_step=None if restored is None else start)
  eval_loss_fn = _eval_loss_fn(exp) if eval_freq else None
  sample_fn = None
  experiment.announce(experiment.summary_line(exp, "train", f"steps {start} -> {n_iters} ({n} per call) | "
                                              f"workdir {workdir}"))

  checkpoints.install_sigterm_handler()
  batches = train_ds.iterate(start)
  window: list[np.ndarray] = []
  window_norms: list[np.ndarray] = []
  last_loss, stopped = None, False
  t_session, t_window, step_window = time.time(), time.time(), start
  bar = tqdm(total=n_iters, initial=start, unit="step", disable=not (progress and writer.enabled),
             dynamic_ncols=True, desc="train")
  try:
    step = start
    while step < n_iters:
      inputs = [model_inputs(exp, next(batches)) for _ in range(n)]
      xs = jax.tree_util.tree_map(lambda *a: np.stack(a), *inputs)  # [n, B_host, H, W, C] (and labels [n, B_host])
      with experiment.compiling(f"the train step ({n} fused, batch {t.batch_size})", enabled=step == start):
        state, metrics = pstep(state, xs, train_key)
        jax.block_until_ready(metrics)
      step += n
      error = _nan_error(metrics, step, n, ckpts, last_good)
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
      stop = parallel.agree_on_stop(checkpoints.should_stop())
      host_state = parallel.unreplicate(state, mode)
      saved = ckpts.save(host_state.to_dict(), step, force=stop or step == n_iters)
      if saved:
        last_good = step
        writer.flush()
      if saved and ckpts.is_snapshot(step) and t.get("snapshot_sampling", False):
        if sample_fn is None:
          sample_fn = experiment.make_sample_fn(exp, int(t.get("snapshot_num_samples", experiment.GRID_MAX)))
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
  losses = np.asarray(eval_loss_fn(params, model_inputs(exp, batch), exp.key(randomness.EVAL), offset))
  return float(losses[batch["mask"]].mean())


def _write_snapshot(exp: Experiment, sample_fn, params, workdir: pathlib.Path, step: int,
                    writer: MetricWriter) -> None:
  x, _ = sample_fn(params, jax.random.fold_in(exp.key(randomness.SNAPSHOT), step), 0)
  x = np.asarray(x)
  finite = np.isfinite(x).reshape(len(x), -1).all(axis=1)
  images = experiment.to_uint8(exp, x)
  if not finite.all():  # a diagnostic grid: training goes on, but the grid is not silently black or saturated
    settings = ", ".join(f"{k}={v}" for k, v in builders.sampler_settings(exp.config).items())
    log.warning("step %d: %d of the %d snapshot samples are not finite (NaN or inf) with sampling settings %s; "
                "their images in the grid are meaningless (see snapshot_nonfinite in train_log.jsonl). Check the "
                "sampler settings, or the model if the loss is rising.", step, int((~finite).sum()), len(x), settings)
  if not writer.enabled:
    return
  if not finite.all():
    writer.scalars(step, {"snapshot_nonfinite": float((~finite).sum())})
  out = workdir / "snapshots" / f"step_{step}"
  out.mkdir(parents=True, exist_ok=True)
  grid = fileio.image_grid(images[:experiment.GRID_MAX])
  fileio.savez(str(out / "samples.npz"), images=images)
  experiment.save_grid(out / "grid.png", grid)
  writer.image(step, "samples", grid)
  log.info("wrote %s", out / "grid.png")
