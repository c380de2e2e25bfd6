"""What the evaluators share: the examples of one pass, and a mean with its standard error."""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from score_jax import datasets

__all__ = ["mean_se", "eval_limit", "pass_mask"]


def mean_se(values: np.ndarray) -> tuple[float, float]:
  """Mean and standard error of the mean (NaN for a single value)."""
  values = np.asarray(values, np.float64)
  se = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else float("nan")
  return float(values.mean()), se


def eval_limit(config: ml_collections.ConfigDict, ds: datasets.Dataset) -> tuple[int, int]:
  """(examples, batches) of one evaluation pass: ``eval.bpd_num_examples`` (0 = all) of the split."""
  cap = int(config.eval.get("bpd_num_examples", 0) or 0)
  count = min(cap, ds.num_examples) if cap else ds.num_examples
  return count, math.ceil(count / ds.global_batch_size)


def pass_mask(ds: datasets.Dataset, batch: dict, index: int, count: int) -> np.ndarray:
  """The rows of evaluation batch ``index`` that are real examples among the first ``count``."""
  positions = index * ds.global_batch_size + np.arange(batch["image"].shape[0])
  return batch["mask"] & (positions < count)
