"""Bits/dim (``eval.enable_bpd``) of dequantized data from the probability-flow ODE."""

from __future__ import annotations

import jax
import numpy as np
from tqdm.auto import tqdm

from score_jax import conditional, datasets, likelihood, randomness
from score_jax import progress as progress_lib
from score_jax.pipeline import experiment
from score_jax.pipeline.evaluators import common
from score_jax.pipeline.experiment import Experiment
from score_jax.pipeline.training import check_labelled, model_inputs

__all__ = ["run"]

T_MIN = 1e-5  # the ODE is integrated from this time (the original's eps of likelihood evaluation)


def run(exp: Experiment, params, split: str, *, progress: bool = True) -> dict:
  """Bits/dim of uniformly dequantized ``split`` images (:func:`score_jax.likelihood.bits_per_dim`,
  Hutchinson-Rademacher trace, tolerances ``sampling.ode_rtol/atol``, from t = 1e-5) with the 8-bit offset
  (7 bits for centered data); ``eval.bpd_num_repeats`` passes with fresh dequantization noise; mean and
  standard error over all (example, pass) values. A class-conditional model gives the bits/dim of each image
  given its true class (``-log p(x | c)``, unguided; recorded as ``bpd_given_class``), so the split needs labels."""
  c = exp.config
  centered = bool(c.data.centered)
  kwargs = dict(data_min=-1.0 if centered else 0.0, data_max=1.0, rtol=c.sampling.ode_rtol, atol=c.sampling.ode_atol,
                eps=T_MIN)

  given_class = bool(conditional.label_dim(c))

  @jax.jit
  def bpd_fn(params, x, labels, key):
    score = experiment.score_fn(exp, params, labels)  # labels None: an unconditional model
    if progress:  # each evaluation of the ODE's drift (score and its divergence probe) advances the inner bar
      score = progress_lib.count_calls(score)
    bpd, _, nfe = likelihood.bits_per_dim(key, exp.sde, score, x, **kwargs)
    return bpd, nfe

  ds = datasets.get_dataset(c, split, uniform_dequantization=True, num_threads=4)
  check_labelled(exp, ds, f"bits/dim split {split!r}")
  count, n_batches = common.eval_limit(c, ds)
  repeats = int(c.eval.get("bpd_num_repeats", 1))
  values, nfes = [], []
  bar = tqdm(total=repeats * n_batches, desc="bits/dim", unit="batch", disable=not progress)
  for r in range(repeats):
    # each pass dequantizes with fresh noise: the dataset's dequantization stream is seeded per pass
    pass_ds = ds if r == 0 else datasets.get_dataset(c, split, seed=int(c.seed) + r, uniform_dequantization=True,
                                                      num_threads=4)
    for index in range(n_batches):
      batch = pass_ds.eval_batch(index)
      key = jax.random.fold_in(jax.random.fold_in(exp.key(randomness.BPD), r), index)
      with experiment.compiling(f"bits/dim (batch {len(batch['image'])})", enabled=not values), \
          progress_lib.bar(f"bits/dim batch {index}", enabled=progress, unit="eval"):
        labels = model_inputs(exp, batch)[1] if given_class else None
        bpd, nfe = bpd_fn(params, batch["image"], labels, key)
        bpd = np.asarray(bpd)
      values.append(np.asarray(bpd)[common.pass_mask(ds, batch, index, count)])
      nfes.append(int(nfe))
      bar.update(1)
      bar.set_postfix(bpd=f"{np.concatenate(values).mean():.4f}", refresh=False)
  bar.close()
  mean, se = common.mean_se(np.concatenate(values))
  result = dict(bpd=mean, bpd_se=se, bpd_examples=count, bpd_repeats=repeats, bpd_mean_nfe=float(np.mean(nfes)))
  return dict(result, bpd_given_class=True) if given_class else result
