"""The embedded 2-D default: train a score MLP on a Gaussian mixture, sample, and compare with the truth.

Training runs on the blocks of the image pipeline: the train step with its EMA
(:func:`score_jax.train.make_train_step`, fused by :func:`score_jax.train.make_fused_train_step`), the
orbax :class:`score_jax.checkpoints.Checkpointer` (resume, refusal of another config's checkpoints), and
derived randomness. Step ``s`` draws example ``i`` of its batch from ``fold_in(fold_in(key_data, s), i)``
and that example's loss randomness (time, noise, projections) from ``fold_in(fold_in(key_train, s), i)``
(:func:`score_jax.train.example_keys`), so a run is a function of ``(seed, step)`` and no draw depends on
the batch it is computed in.

Every number is checked against the exact mixture: sample quality by sliced Wasserstein and MMD to
held-out true samples (with the same distances between two independent true sets as the noise floor),
and the ODE log-likelihood against the exact log-density. Outputs in the work directory:

- ``samples.png``: true samples, PC samples and ODE samples side by side;
- ``score_field.png``: learned vs exact score field at ``eval.score_field_t``, and the error;
- ``loss.png``: the training loss (of the steps trained by this call);
- ``metrics.json``: the numbers; ``samples.npz``: the samples;
- ``checkpoints/<step>/``: the training state (orbax); ``model.json`` (:data:`CHECKPOINT`): the record of
  the trained model (step, checkpoint, SHA-256 of its EMA weights), written when training completes.

Work directories of score_jax versions that saved ``checkpoint.msgpack`` are not read: retrain.

A state, as :func:`train` returns it and :func:`load_state` reads it, is the dict
``{step, params, ema_params, opt_state}`` that the Checkpointer saves (``train.TrainState.to_dict()``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pathlib
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from score_jax import (
  builders,
  checkpoints,
  fileio,
  gmm,
  likelihood,
  losses,
  metrics,
  models,
  randomness,
  sampling,
  validation,
)
from score_jax import train as train_lib
from score_jax.pipeline import workdir as workdir_lib

__all__ = ["train", "evaluate", "sample", "run", "init_state", "load_state", "score_fn", "make_loss_fn",
           "draw_batch", "CHECKPOINT"]

log = logging.getLogger(__name__)

CHECKPOINT = "model.json"  # the record of the trained model, beside checkpoints/
LEGACY_CHECKPOINT = "checkpoint.msgpack"  # the single file of score_jax versions before the orbax checkpoints

# The noise-conditional objectives (ism, ssm, ssm_vr) of :func:`make_loss_fn`.
NOISE_CONDITIONAL = ("ism", "ssm", "ssm_vr")
_LOSS_TAIL = 200  # final_loss in metrics.json: the mean loss of the last steps


# ---- training --------------------------------------------------------------------------------------------

def init_state(key, model, optimizer, dim: int) -> dict[str, Any]:
  """Parameters, EMA copy, optimizer state and step 0 of a fresh model on ``dim``-dimensional data."""
  return train_lib.init_train_state(key, None, model, optimizer, input_shape=(1, dim)).to_dict()


def draw_batch(mixture: gmm.GaussianMixture, key_step, batch_size: int, offset=0):
  """Examples ``offset + arange(batch_size)`` ``[batch_size, D]`` of one step's batch; example ``i`` is drawn
  from ``fold_in(key_step, i)`` alone."""
  keys = train_lib.example_keys(key_step, batch_size, offset)
  return jax.vmap(lambda k: mixture.sample(k, 1)[0])(keys)


def make_loss_fn(config: ml_collections.ConfigDict, model, sde):
  """``loss_fn(params, x [B, D], key_step, offset=0) -> scalar``: ``training.loss`` as a loss of
  :func:`score_jax.train.make_train_step`.

  ``dsm`` is the image models' objective (:func:`score_jax.train.make_loss_fn`); ``ism``, ``ssm`` and
  ``ssm_vr`` are :func:`score_jax.losses.noise_conditional_loss` with each example's time and noise drawn
  from its key as there (:func:`score_jax.train.example_time`, :func:`~score_jax.train.example_noise`), and
  ``training.n_projections`` projections from the same key.
  """
  t = config.training
  builders.build_loss_fn(config, sde)  # an unknown training.loss fails here
  if t.loss not in NOISE_CONDITIONAL:
    return train_lib.make_loss_fn(config, model, sde)

  def loss_fn(params, x, key_step, offset=0):
    keys = train_lib.example_keys(key_step, x.shape[0], offset)  # [B]
    time = jax.vmap(lambda k: train_lib.example_time(k, sde, t.eps))(keys)  # [B]
    z = jax.vmap(lambda k: train_lib.example_noise(k, x.shape[1:]))(keys)  # [B, D]
    v = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, randomness.EXAMPLE_PROJECTIONS),
                                             (t.n_projections,) + x.shape[1:]))(keys)  # [B, M, D]
    fn = models.get_score_fn(sde, model, {"params": params}, train=True)
    return losses.noise_conditional_loss(sde, fn, x.astype(jnp.float32), time, z, v, t.loss)

  return loss_fn


def _make_train_chunk(config, sde, model, optimizer, mixture):
  """A jitted ``chunk(state, key_data, key_train) -> (state, metrics)`` of ``training.n_jitted_steps`` steps.

  Step ``s`` trains on :func:`draw_batch` of ``fold_in(key_data, s)``; its loss randomness is the train
  step's ``fold_in(key_train, s)``.
  """
  t = config.training
  step_fn = train_lib.make_train_step(config, model, sde, optimizer, loss_fn=make_loss_fn(config, model, sde))
  # A rolled loop: unrolling the MLP's steps (the CPU default for the image networks) only lengthens compiles.
  steps_fn = train_lib.make_fused_train_step(step_fn, unroll=1)

  def chunk(state, key_data, key_train):
    steps = state.step + jnp.arange(t.n_jitted_steps)
    xs = jax.vmap(lambda s: draw_batch(mixture, jax.random.fold_in(key_data, s), t.batch_size))(steps)  # [n, B, D]
    return steps_fn(state, xs, key_train)

  return jax.jit(chunk, donate_argnums=0)


def _check_schedule(config) -> None:
  t = config.training
  validation.check_int(t.batch_size, "training.batch_size")  # batch 0 would train on no data: a NaN loss
  validation.check_int(t.n_iters, "training.n_iters")
  n_iters, chunk_len = t.n_iters, t.n_jitted_steps
  if chunk_len < 1 or n_iters % chunk_len:
    raise ValueError(f"training.n_iters ({n_iters}) must be a positive multiple of training.n_jitted_steps "
                     f"({chunk_len}).")
  for name in ("snapshot_freq", "snapshot_freq_for_preemption"):
    freq = t.get(name, 0) or 0
    if freq % chunk_len:
      raise ValueError(f"training.{name} ({freq}) must be a multiple of training.n_jitted_steps ({chunk_len}); "
                       "checkpoints are written between fused calls.")


def _legacy_error(path) -> str:
  return (f"{path} is a checkpoint of an older score_jax (msgpack), which this version does not read; retrain: "
          "--mode=train into a new --workdir, or here with --config.training.overwrite=True.")


def _remove_trained(workdir: pathlib.Path) -> None:
  """Delete the model in ``workdir`` (``training.overwrite``): checkpoints, record and any legacy checkpoint."""
  log.warning("training.overwrite=True: deleting the model in %s", workdir)
  shutil.rmtree(workdir / checkpoints.SUBDIR, ignore_errors=True)
  for name in (CHECKPOINT, LEGACY_CHECKPOINT):
    if (workdir / name).exists():
      (workdir / name).unlink()


def _params_sha256(params) -> str:
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(params):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def train(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict[str, Any]:
  """Train the score model of ``config`` on the 2-D mixture, resuming from ``workdir``'s newest checkpoint.

  Checkpoints every ``training.snapshot_freq_for_preemption`` steps (each replaces the previous) and at the
  end. A model already trained to ``training.n_iters`` (or beyond) is never replaced unless
  ``training.overwrite=True``; a checkpoint of another config (``model``, ``data`` or seed) is refused.

  Returns:
    ``state`` (the final state dict), ``loss_history`` (the loss of each step trained by this call),
    ``start_step``, ``train_seconds``, ``n_params``.
  """
  builders.validate(config)  # a typo anywhere in the config fails now, not after training
  _check_schedule(config)
  t = config.training
  workdir = pathlib.Path(workdir)
  overwrite = bool(t.get("overwrite", False))
  if overwrite:
    _remove_trained(workdir)
  elif (workdir / LEGACY_CHECKPOINT).exists():
    raise FileExistsError(_legacy_error(workdir / LEGACY_CHECKPOINT))
  sde, model, optimizer = builders.build_sde(config), builders.build_model(config), builders.build_optimizer(config)
  mixture = gmm.default_mixture()
  key = jax.random.PRNGKey(config.seed)
  state = init_state(jax.random.fold_in(key, randomness.TOY_INIT), model, optimizer, mixture.dim)
  ckpts = checkpoints.Checkpointer.from_config(config, workdir, template=state)
  try:
    latest = ckpts.latest_step()
    if latest is not None and latest >= t.n_iters:
      raise FileExistsError(f"{ckpts.directory / str(latest)} already holds a trained model; evaluate it with "
                            "--mode=eval, train into a new --workdir, or pass --config.training.overwrite=True to "
                            "replace it.")
    restored = ckpts.restore_latest()  # refuses another config's checkpoints before anything is written
    state = train_lib.TrainState(**(state if restored is None else restored))
    start = int(state.step)
    if start % t.n_jitted_steps:
      raise ValueError(f"the checkpoint is at step {start}, not a multiple of training.n_jitted_steps="
                       f"{t.n_jitted_steps}; resume with the n_jitted_steps it was trained with.")
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
    log.info("device %s | batch %d | %d parameters | sde %s | loss %s | steps %d -> %d", jax.devices()[0].platform,
             t.batch_size, n_params, type(sde).__name__, t.loss, start, t.n_iters)
    chunk = _make_train_chunk(config, sde, model, optimizer, mixture)
    key_data, key_train = jax.random.fold_in(key, randomness.TOY_DATA), jax.random.fold_in(key, randomness.TOY_TRAIN)
    history = []
    t_start = time.time()
    with tqdm(total=t.n_iters, initial=start, desc="train", unit="it", disable=not progress,
              dynamic_ncols=True) as bar:
      for step in range(start + t.n_jitted_steps, t.n_iters + 1, t.n_jitted_steps):
        state, step_metrics = chunk(state, key_data, key_train)
        losses = np.asarray(step_metrics["loss"])
        if not np.all(np.isfinite(losses)):
          bad = step - t.n_jitted_steps + 1 + int(np.argmin(np.isfinite(losses)))
          raise FloatingPointError(f"training loss is not finite at step {bad}; stopping without saving (last "
                                   f"checkpoint: step {ckpts.latest_step()}). Lower optim.lr or check the config.")
        history.extend(losses.tolist())
        ckpts.save(state.to_dict(), step, force=step == t.n_iters)
        bar.update(t.n_jitted_steps)
        bar.set_postfix(loss=f"{losses.mean():.4f}")
        if step % t.log_freq == 0:
          log.info("step %d: loss %.5f", step, losses.mean())
    train_seconds = time.time() - t_start
  finally:
    ckpts.close()
  step = int(state.step)
  record = dict(step=step, checkpoint=f"{checkpoints.SUBDIR}/{step}", ema_params_sha256=_params_sha256(
      state.ema_params), fingerprint=ckpts.fingerprint, seed=config.seed)
  fileio.write_bytes(str(workdir / CHECKPOINT), json.dumps(record, indent=2).encode())
  return dict(state=state.to_dict(), loss_history=np.asarray(history), start_step=start,
              train_seconds=train_seconds, n_params=n_params)


def load_state(config, workdir: str) -> dict[str, Any]:
  """The newest state saved by :func:`train` in ``workdir`` (``{step, params, ema_params}``, no optimizer state).

  Evaluation needs only the parameter tree to fit ``config.model``: the SDE and sampler settings (e.g.
  ``model.num_scales``) and the seed may differ from training's. A clear error if there is no checkpoint
  or it does not fit.
  """
  workdir = pathlib.Path(workdir)
  directory = workdir / checkpoints.SUBDIR
  if not directory.is_dir():
    if (workdir / LEGACY_CHECKPOINT).exists():
      raise FileNotFoundError(_legacy_error(workdir / LEGACY_CHECKPOINT))
    raise FileNotFoundError(f"no checkpoint at {directory}; run with --mode=train first.")
  model, optimizer = builders.build_model(config), builders.build_optimizer(config)
  template = jax.eval_shape(lambda: init_state(jax.random.PRNGKey(0), model, optimizer, gmm.default_mixture().dim))
  with checkpoints.Checkpointer.from_config(config, workdir, template) as probe:
    meta = None
    for step in reversed(probe.all_steps()):
      try:
        meta = probe.metadata(step)
        break
      except checkpoints.CheckpointCorruptError as e:
        log.warning("skipping corrupt checkpoint %s: %s", directory / str(step), e)
  if meta is None:
    raise FileNotFoundError(f"no valid checkpoint at {directory}; run with --mode=train first.")
  # The checkpoint's own config record and seed stand in for the config's: only the parameters must match.
  reader = checkpoints.Checkpointer(workdir, template, snapshot_freq=None, preemption_freq=None,
                                    config_sections=meta["config"], seed=meta.get("seed"))
  with reader:
    try:
      state = reader.restore_latest(items=("step", "params", "ema_params"))
    except ValueError as e:
      raise ValueError(f"the checkpoint in {directory} does not match config.model; use the config it was "
                       f"trained with. {e}") from e
  if state is None:
    raise FileNotFoundError(f"no valid checkpoint at {directory}; run with --mode=train first.")
  return state


# ---- sampling and evaluation -----------------------------------------------------------------------------

def score_fn(config, state, *, ema: bool = True):
  """``(sde, score_fn)`` of the trained model: the batched score ``score_fn(x [B, D], t [B])`` of the EMA
  weights (the raw weights with ``ema=False``)."""
  sde, model = builders.build_sde(config), builders.build_model(config)
  params = state["ema_params"] if ema else state["params"]
  return sde, models.get_score_fn(sde, model, {"params": params})


def sample(config, state, key, *, progress: bool = True) -> dict[str, Any]:
  """PC and ODE samples of the trained model (``eval.num_samples`` each) with their NFE and wall time."""
  pc_kwargs = builders.sampler_kwargs(config)  # bad sampler names fail here, before any work
  sde, fn = score_fn(config, state)
  n, s = config.eval.num_samples, config.sampling
  shape = (n, 2)
  out = {}
  pc = jax.jit(lambda k: sampling.pc_sample(k, sde, fn, shape, **pc_kwargs)[0])
  ode = jax.jit(lambda k: sampling.ode_sample(k, sde, fn, shape, rtol=s.ode_rtol, atol=s.ode_atol, eps=s.eps))
  runs = [("pc", randomness.TOY_SAMPLE_PC, pc), ("ode", randomness.TOY_SAMPLE_ODE, ode)]
  for name, stream, sample_fn in tqdm(runs, desc="sample", disable=not progress):
    start = time.time()
    result = sample_fn(jax.random.fold_in(key, stream))
    samples = np.asarray(result[0] if name == "ode" else result)
    nfe = int(result[1]) if name == "ode" else sampling.pc_nfe(sde.N, s.n_steps_each)
    out[name] = dict(samples=samples, nfe=nfe, seconds=time.time() - start)
  return out


def evaluate(config, state, workdir: str, *, loss_history=None, progress: bool = True) -> dict[str, Any]:
  """Sample, compute the metrics against the exact mixture, write the plots and ``metrics.json``."""
  mixture = gmm.default_mixture()
  sde, fn = score_fn(config, state)
  key = randomness.run_key(config.seed, randomness.TOY_EVAL)
  streams = (randomness.TOY_EVAL_TRUE, randomness.TOY_EVAL_FLOOR, randomness.TOY_EVAL_SAMPLES,
             randomness.TOY_EVAL_SLICES, randomness.TOY_EVAL_LIKELIHOOD)
  key_true, key_floor, key_sample, key_sw, key_ll = (jax.random.fold_in(key, s) for s in streams)
  n = config.eval.num_samples
  true = np.asarray(mixture.sample(key_true, n))
  floor = np.asarray(mixture.sample(key_floor, n))
  drawn = sample(config, state, key_sample, progress=progress)

  result = dict(config=dict(sde=type(sde).__name__, loss=config.training.loss, n_iters=config.training.n_iters,
                            predictor=config.sampling.predictor, corrector=config.sampling.corrector,
                            snr=config.sampling.snr, N=sde.N, num_samples=n, seed=config.seed),
                step=int(state["step"]))
  result["reference_true_vs_true"] = dict(sliced_wasserstein=float(metrics.sliced_wasserstein(key_sw, true, floor)),
                                          mmd=float(metrics.mmd_rbf(true, floor)))
  for name, d in drawn.items():
    result[name] = dict(sliced_wasserstein=float(metrics.sliced_wasserstein(key_sw, true, d["samples"])),
                        mmd=float(metrics.mmd_rbf(true, d["samples"])), nfe=d["nfe"], seconds=round(d["seconds"], 2),
                        mean=d["samples"].mean(0).tolist(), finite=bool(np.all(np.isfinite(d["samples"]))))
  result["likelihood"] = _likelihood_metrics(config, sde, fn, mixture, true[: config.eval.num_likelihood], key_ll)
  if loss_history is not None and len(loss_history):
    result["final_loss"] = float(np.mean(loss_history[-_LOSS_TAIL:]))

  from score_jax import plots  # matplotlib only when writing figures
  os.makedirs(workdir, exist_ok=True)
  fileio.savefig(plots.samples_figure(true, {k: v["samples"] for k, v in drawn.items()}),
                  os.path.join(workdir, "samples.png"))
  fileio.savefig(plots.score_field_figure(fn, mixture.score_fn(sde), config.eval.score_field_t,
                                           f"{type(sde).__name__}, t = {config.eval.score_field_t}",
                                           lambda x, t: mixture.marginal_log_prob(sde, x, t)),
                  os.path.join(workdir, "score_field.png"))
  if loss_history is not None and len(loss_history):
    fileio.savefig(plots.loss_figure(loss_history), os.path.join(workdir, "loss.png"))
  fileio.savez(os.path.join(workdir, "samples.npz"), true=true, **{k: v["samples"] for k, v in drawn.items()})
  fileio.write_bytes(os.path.join(workdir, "metrics.json"), json.dumps(result, indent=2).encode())
  return result


def _likelihood_metrics(config, sde, fn, mixture, x, key) -> dict[str, float]:
  """Mean NLL (nats) of held-out points: the model's ODE, the ODE with the exact score, and the truth."""
  eps, rtol, atol = config.eval.likelihood_eps, config.sampling.ode_rtol, config.sampling.ode_atol
  x = jnp.asarray(x)
  nll = jax.jit(lambda s_fn: -likelihood.log_likelihood(key, sde, s_fn, x, divergence="exact", eps=eps,
                                                        rtol=rtol, atol=atol)[0], static_argnums=0)
  nll_model = np.asarray(nll(fn))
  nll_exact_score = np.asarray(nll(mixture.score_fn(sde)))
  nll_true = -np.asarray(mixture.log_prob(x))
  sem = float(np.std(nll_model - nll_true) / math.sqrt(len(nll_true)))
  return dict(nll_model=float(nll_model.mean()), nll_ode_exact_score=float(nll_exact_score.mean()),
              nll_true=float(nll_true.mean()), gap=float(nll_model.mean() - nll_true.mean()), gap_sem=sem,
              num_points=int(len(nll_true)))


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "train", *, progress: bool = True):
  """``train``: train (or resume) then evaluate; ``eval``: evaluate the saved model; ``sample``: write samples
  only. The work directory is locked for the call (:func:`score_jax.pipeline.workdir.lock`)."""
  if mode not in ("train", "eval", "sample"):
    raise ValueError(f"Unknown mode {mode!r}; expected 'train', 'eval' or 'sample'.")
  with workdir_lib.lock(workdir, mode):
    return _run(config, workdir, mode, progress=progress)


def _run(config: ml_collections.ConfigDict, workdir: str, mode: str, *, progress: bool):
  if mode == "train":
    trained = train(config, workdir, progress=progress)
    result = evaluate(config, trained["state"], workdir, loss_history=trained["loss_history"], progress=progress)
    result["train_seconds"] = round(trained["train_seconds"], 1)
    result["n_params"] = trained["n_params"]
    fileio.write_bytes(os.path.join(workdir, "metrics.json"), json.dumps(result, indent=2).encode())
    return result
  state = load_state(config, workdir)
  if mode == "eval":
    return evaluate(config, state, workdir, progress=progress)
  drawn = sample(config, state, randomness.run_key(config.seed, randomness.TOY_SAMPLE), progress=progress)
  fileio.savez(os.path.join(workdir, "samples.npz"), **{k: v["samples"] for k, v in drawn.items()})
  return {k: dict(nfe=v["nfe"], seconds=v["seconds"]) for k, v in drawn.items()}
