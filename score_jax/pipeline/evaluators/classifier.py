"""A noise-conditional classifier's test accuracy and cross-entropy on perturbed test images (``--mode eval``)."""

from __future__ import annotations

import jax
import numpy as np
from tqdm.auto import tqdm

from score_jax import classifier, datasets, randomness, validation
from score_jax.pipeline.evaluators import common
from score_jax.pipeline.experiment import Experiment
from score_jax.pipeline.training import model_inputs

__all__ = ["run", "NOISE_BINS"]

NOISE_BINS = 10  # bins of t of a classifier's accuracy, where a config sets no eval.num_noise_bins


def run(exp: Experiment, params, ds: datasets.Dataset, *, progress: bool = True) -> dict:
  """Accuracy and loss of each example ``i``, classified at ``x_t = a(t) x + s(t) z`` with ``t ~ U(training.eps,
  T)`` drawn from the evaluation key and ``i`` (the training draws, so the numbers do not depend on the
  batching): overall (mean and standard error over the examples) and in ``eval.num_noise_bins`` equal bins of
  ``t`` with the noise levels ``s(t)`` at their edges; ``eval.bpd_num_examples`` (0 = all) limits the examples."""
  config = exp.config
  n_bins = validation.check_int(config.eval.get("num_noise_bins", NOISE_BINS), "eval.num_noise_bins")
  eps = config.training.get("eps", 1e-5)
  fn = jax.jit(classifier.make_eval_fn(exp.model, exp.sde, eps=eps))
  count, n_batches = common.eval_limit(config, ds)
  parts: dict[str, list[np.ndarray]] = dict(loss=[], correct=[], t=[])
  for index in tqdm(range(n_batches), desc="eval accuracy", unit="batch", disable=not progress):
    batch = ds.eval_batch(index)
    mask = common.pass_mask(ds, batch, index, count)
    out = fn(params, model_inputs(exp, batch), exp.key(randomness.EVAL), index * ds.global_batch_size)
    for name in parts:
      parts[name].append(np.asarray(out[name])[mask])
  loss, correct, t = (np.concatenate(parts[name]) for name in ("loss", "correct", "t"))
  accuracy, accuracy_se = common.mean_se(correct.astype(np.float64))
  mean_loss, loss_se = common.mean_se(loss)
  return dict(accuracy=accuracy, accuracy_se=accuracy_se, loss=mean_loss, loss_se=loss_se, examples=count,
              bins=classifier.accuracy_by_bins(exp.sde, t, correct, eps=eps, n_bins=n_bins))
