"""The embedded 2-D default: train a score MLP on a Gaussian mixture, sample, and compare with the truth.

Every number is checked against the exact mixture: sample quality by sliced Wasserstein and MMD to
held-out true samples (with the same distances between two independent true sets as the noise floor),
and the ODE log-likelihood against the exact log-density. Outputs in the work directory:

- ``samples.png``: true samples, PC samples and ODE samples side by side;
- ``score_field.png``: learned vs exact score field at ``eval.score_field_t``, and the error;
- ``loss.png``: the training loss;
- ``metrics.json``: the numbers; ``samples.npz``: the samples; ``checkpoint.msgpack``: the weights.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from tqdm.auto import tqdm

from score_jax import builders, fileio, gmm, likelihood, metrics, models, sampling

__all__ = ["train", "evaluate", "sample", "run", "init_state"]

CHECKPOINT = "checkpoint.msgpack"


# ---- training --------------------------------------------------------------------------------------------

def init_state(key, model, optimizer, dim: int) -> dict[str, Any]:
  """Parameters, EMA copy, optimizer state and step of a fresh model."""
  params = model.init(key, jnp.zeros((1, dim)), jnp.ones((1,)))["params"]
  return dict(params=params, ema_params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))


def _make_train_chunk(config, sde, model, optimizer, mixture):
  """A jitted ``chunk(state, key) -> (state, losses [n_jitted_steps])`` of fused training steps.

  Step ``i`` draws its data and loss randomness from ``fold_in(key, i)``, so a run is a function of
  ``(seed, step)`` only.
  """
  loss_fn = builders.build_loss_fn(config, sde)
  ema_rate = config.model.ema_rate
  batch_size = config.training.batch_size

  def train_step(state, key):
    key = jax.random.fold_in(key, state["step"])
    key_data, key_loss = jax.random.split(key)
    x = mixture.sample(key_data, batch_size)

    def objective(params):
      return loss_fn(key_loss, models.get_score_fn(sde, model, {"params": params}, train=True), x)

    loss, grads = jax.value_and_grad(objective)(state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema_params = jax.tree_util.tree_map(lambda e, p: ema_rate * e + (1 - ema_rate) * p, state["ema_params"], params)
    return dict(params=params, ema_params=ema_params, opt_state=opt_state, step=state["step"] + 1), loss

  def chunk(state, key):
    return jax.lax.scan(lambda s, _: train_step(s, key), state, None, length=config.training.n_jitted_steps)

  return jax.jit(chunk)


def train(config: ml_collections.ConfigDict, workdir: str, *, progress: bool = True) -> dict[str, Any]:
  """Train the score model of ``config`` on the 2-D mixture; returns the final state and the loss history."""
  builders.validate(config)  # a typo anywhere in the config fails now, not after training
  existing = os.path.join(workdir, CHECKPOINT)
  if os.path.exists(existing) and not config.training.get("overwrite", False):
    raise FileExistsError(f"{existing} already holds a trained model; evaluate it with --mode=eval, train into a "
                          "new --workdir, or pass --config.training.overwrite=True to replace it.")
  sde, model, optimizer = builders.build_sde(config), builders.build_model(config), builders.build_optimizer(config)
  mixture = gmm.default_mixture()
  n_iters, chunk_len = config.training.n_iters, config.training.n_jitted_steps
  if chunk_len < 1 or n_iters % chunk_len:
    raise ValueError(f"training.n_iters ({n_iters}) must be a positive multiple of training.n_jitted_steps "
                     f"({chunk_len}).")
  key = jax.random.PRNGKey(config.seed)
  key_init, key_train = jax.random.split(jax.random.fold_in(key, 0))
  state = init_state(key_init, model, optimizer, mixture.dim)
  n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state["params"]))
  logging.info("device %s | batch %d | %d parameters | sde %s | loss %s", jax.devices()[0].platform,
               config.training.batch_size, n_params, type(sde).__name__, config.training.loss)
  chunk = _make_train_chunk(config, sde, model, optimizer, mixture)
  history = []
  start = time.time()
  with tqdm(total=n_iters, desc="train", unit="it", disable=not progress, dynamic_ncols=True) as bar:
    for _ in range(n_iters // chunk_len):
      state, losses = chunk(state, key_train)
      losses = np.asarray(losses)
      step = int(state["step"])
      if not np.all(np.isfinite(losses)):
        bad = step - chunk_len + int(np.argmin(np.isfinite(losses)))
        raise FloatingPointError(f"training loss is not finite at step {bad}; nothing was saved. "
                                 "Lower optim.lr or check the config.")
      history.extend(losses.tolist())
      bar.update(chunk_len)
      bar.set_postfix(loss=f"{losses.mean():.4f}")
      if step % config.training.log_freq == 0:
        logging.info("step %d: loss %.5f", step, losses.mean())
  os.makedirs(workdir, exist_ok=True)
  fileio.write_bytes(os.path.join(workdir, CHECKPOINT), flax.serialization.to_bytes(state))
  return dict(state=state, loss_history=np.asarray(history), train_seconds=time.time() - start, n_params=n_params)


def load_state(config, workdir: str) -> dict[str, Any]:
  """The state saved by :func:`train` in ``workdir``; a clear error if there is none or it does not fit."""
  path = os.path.join(workdir, CHECKPOINT)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint at {path}; run with --mode=train first.")
  model, optimizer = builders.build_model(config), builders.build_optimizer(config)
  template = init_state(jax.random.PRNGKey(0), model, optimizer, gmm.default_mixture().dim)
  with open(path, "rb") as f:
    raw = flax.serialization.msgpack_restore(f.read())
  expected = flax.serialization.to_state_dict(template)
  mismatches = _tree_mismatches(expected, raw)
  if mismatches:
    raise ValueError(f"checkpoint {path} does not match config.model; first mismatches: {mismatches[:5]}. "
                     "Use the config the checkpoint was trained with.")
  return flax.serialization.from_state_dict(template, raw)


def _tree_mismatches(expected, found, prefix: str = "") -> list[str]:
  """Paths whose presence or shape differ between two nested state dicts."""
  if isinstance(expected, dict) and isinstance(found, dict):
    out = [f"{prefix}/{k}: missing" for k in expected if k not in found]
    out += [f"{prefix}/{k}: unexpected" for k in found if k not in expected]
    for k in expected:
      if k in found:
        out += _tree_mismatches(expected[k], found[k], f"{prefix}/{k}")
    return out
  if isinstance(expected, dict) != isinstance(found, dict):
    return [f"{prefix}: structure differs"]
  if np.shape(expected) != np.shape(found):
    return [f"{prefix}: shape {np.shape(found)}, expected {np.shape(expected)}"]
  return []


# ---- sampling and evaluation -----------------------------------------------------------------------------

def _score_fn(config, state, *, ema: bool = True):
  sde, model = builders.build_sde(config), builders.build_model(config)
  params = state["ema_params"] if ema else state["params"]
  return sde, models.get_score_fn(sde, model, {"params": params})


def sample(config, state, key, *, progress: bool = True) -> dict[str, Any]:
  """PC and ODE samples of the trained model (``eval.num_samples`` each) with their NFE and wall time."""
  pc_kwargs = builders.sampler_kwargs(config)  # bad sampler names fail here, before any work
  sde, score_fn = _score_fn(config, state)
  n, s = config.eval.num_samples, config.sampling
  shape = (n, 2)
  out = {}
  pc = jax.jit(lambda k: sampling.pc_sample(k, sde, score_fn, shape, **pc_kwargs)[0])
  ode = jax.jit(lambda k: sampling.ode_sample(k, sde, score_fn, shape, rtol=s.ode_rtol, atol=s.ode_atol, eps=s.eps))
  for name, fn in tqdm([("pc", pc), ("ode", ode)], desc="sample", disable=not progress):
    start = time.time()
    result = fn(jax.random.fold_in(key, 0 if name == "pc" else 1))
    samples = np.asarray(result[0] if name == "ode" else result)
    nfe = int(result[1]) if name == "ode" else sampling.pc_nfe(sde.N, s.n_steps_each)
    out[name] = dict(samples=samples, nfe=nfe, seconds=time.time() - start)
  return out


def evaluate(config, state, workdir: str, *, loss_history=None, progress: bool = True) -> dict[str, Any]:
  """Sample, compute the metrics against the exact mixture, write the plots and ``metrics.json``."""
  mixture = gmm.default_mixture()
  sde, score_fn = _score_fn(config, state)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  key_true, key_floor, key_sample, key_sw, key_ll = jax.random.split(key, 5)
  n = config.eval.num_samples
  true = np.asarray(mixture.sample(key_true, n))
  floor = np.asarray(mixture.sample(key_floor, n))
  drawn = sample(config, state, key_sample, progress=progress)

  result = dict(config=dict(sde=type(sde).__name__, loss=config.training.loss, n_iters=config.training.n_iters,
                            predictor=config.sampling.predictor, corrector=config.sampling.corrector,
                            snr=config.sampling.snr, N=sde.N, num_samples=n, seed=config.seed))
  result["reference_true_vs_true"] = dict(sliced_wasserstein=float(metrics.sliced_wasserstein(key_sw, true, floor)),
                                          mmd=float(metrics.mmd_rbf(true, floor)))
  for name, d in drawn.items():
    result[name] = dict(sliced_wasserstein=float(metrics.sliced_wasserstein(key_sw, true, d["samples"])),
                        mmd=float(metrics.mmd_rbf(true, d["samples"])), nfe=d["nfe"], seconds=round(d["seconds"], 2),
                        mean=d["samples"].mean(0).tolist(), finite=bool(np.all(np.isfinite(d["samples"]))))
  result["likelihood"] = _likelihood_metrics(config, sde, score_fn, mixture, true[: config.eval.num_likelihood], key_ll)
  if loss_history is not None:
    result["final_loss"] = float(np.mean(loss_history[-200:]))

  from score_jax import plots  # matplotlib only when writing figures
  os.makedirs(workdir, exist_ok=True)
  fileio.savefig(plots.samples_figure(true, {k: v["samples"] for k, v in drawn.items()}),
                  os.path.join(workdir, "samples.png"))
  fileio.savefig(plots.score_field_figure(score_fn, mixture.score_fn(sde), config.eval.score_field_t,
                                           f"{type(sde).__name__}, t = {config.eval.score_field_t}",
                                           lambda x, t: mixture.marginal_log_prob(sde, x, t)),
                  os.path.join(workdir, "score_field.png"))
  if loss_history is not None:
    fileio.savefig(plots.loss_figure(loss_history), os.path.join(workdir, "loss.png"))
  fileio.savez(os.path.join(workdir, "samples.npz"), true=true, **{k: v["samples"] for k, v in drawn.items()})
  fileio.write_bytes(os.path.join(workdir, "metrics.json"), json.dumps(result, indent=2).encode())
  return result


def _likelihood_metrics(config, sde, score_fn, mixture, x, key) -> dict[str, float]:
  """Mean NLL (nats) of held-out points: the model's ODE, the ODE with the exact score, and the truth."""
  eps, rtol, atol = config.eval.likelihood_eps, config.sampling.ode_rtol, config.sampling.ode_atol
  x = jnp.asarray(x)
  nll = jax.jit(lambda s_fn: -likelihood.log_likelihood(key, sde, s_fn, x, divergence="exact", eps=eps,
                                                        rtol=rtol, atol=atol)[0], static_argnums=0)
  nll_model = np.asarray(nll(score_fn))
  nll_exact_score = np.asarray(nll(mixture.score_fn(sde)))
  nll_true = -np.asarray(mixture.log_prob(x))
  sem = float(np.std(nll_model - nll_true) / math.sqrt(len(nll_true)))
  return dict(nll_model=float(nll_model.mean()), nll_ode_exact_score=float(nll_exact_score.mean()),
              nll_true=float(nll_true.mean()), gap=float(nll_model.mean() - nll_true.mean()), gap_sem=sem,
              num_points=int(len(nll_true)))


def run(config: ml_collections.ConfigDict, workdir: str, mode: str = "train", *, progress: bool = True):
  """``train``: train then evaluate; ``eval``: evaluate the saved model; ``sample``: write samples only."""
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
  if mode == "sample":
    drawn = sample(config, state, jax.random.fold_in(jax.random.PRNGKey(config.seed), 2), progress=progress)
    fileio.savez(os.path.join(workdir, "samples.npz"), **{k: v["samples"] for k, v in drawn.items()})
    return {k: dict(nfe=v["nfe"], seconds=v["seconds"]) for k, v in drawn.items()}
  raise ValueError(f"Unknown mode {mode!r}; expected 'train', 'eval' or 'sample'.")
