"""The test loss (``eval.enable_loss``): the training objective on the evaluation split, without dropout."""

from __future__ import annotations

import jax
import numpy as np
from tqdm.auto import tqdm

from score_jax import datasets, randomness, train
from score_jax.pipeline.evaluators import common
from score_jax.pipeline.experiment import Experiment
from score_jax.pipeline.training import model_inputs

__all__ = ["run"]


def run(exp: Experiment, params, ds: datasets.Dataset, *, progress: bool = True) -> dict:
  """Mean and standard error over the examples of each example's loss, drawn from its global index (so the
  numbers do not depend on the batching): ``{'loss', 'loss_se', 'loss_examples'}``."""
  fn = jax.jit(train.make_eval_loss_fn(exp.config, exp.model, exp.sde))
  count, n_batches = common.eval_limit(exp.config, ds)
  values = []
  for index in tqdm(range(n_batches), desc="eval loss", unit="batch", disable=not progress):
    batch = ds.eval_batch(index)
    losses = np.asarray(fn(params, model_inputs(exp, batch), exp.key(randomness.EVAL), index * ds.global_batch_size))
    values.append(losses[common.pass_mask(ds, batch, index, count)])
  mean, se = common.mean_se(np.concatenate(values))
  return dict(loss=mean, loss_se=se, loss_examples=count)
