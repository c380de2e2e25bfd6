"""Every randomness stream of score_jax, by name: keys are derived with ``fold_in``, never carried or split.

A run's keys come from ``config.seed`` alone: ``run_key(seed, stream)`` = ``fold_in(PRNGKey(seed), stream)``
for each of the run streams below. Within a stream, step ``s`` folds in ``s`` and example ``i`` folds in its
*global* index (:func:`example_keys`), so that an example's draws depend on neither the batch it is drawn in
nor the number of devices; an example's key is then split into its independent draws by folding in one of
the tags below (never ``split``, whose results depend on how many keys are asked for).

The numbers are part of the results: changing one changes every sample and every training run drawn with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = [
    "INIT", "TRAIN", "SNAPSHOT", "EVAL", "SAMPLE", "BPD", "CONTROLLABLE", "EXAMPLE_T", "EXAMPLE_NOISE",
    "EXAMPLE_DROPOUT", "EXAMPLE_PROJECTIONS", "EXAMPLE_LABEL_DROP", "PRIOR", "SAMPLE_CLASS",
    "CORRECTOR", "PREDICTOR", "CONSTRAINT_AFTER_CORRECTOR",
    "CONSTRAINT_AFTER_PREDICTOR", "ABLATE_TRUE", "ABLATE_FLOOR", "ABLATE_SAMPLE", "ABLATE_SLICES", "TOY_INIT",
    "TOY_TRAIN", "TOY_DATA", "TOY_EVAL", "TOY_SAMPLE", "TOY_EVAL_TRUE", "TOY_EVAL_FLOOR", "TOY_EVAL_SAMPLES",
    "TOY_EVAL_SLICES", "TOY_EVAL_LIKELIHOOD", "TOY_SAMPLE_PC", "TOY_SAMPLE_ODE", "run_key", "example_keys",
    "normal_draws",
]

# ---- run streams: fold_in(PRNGKey(config.seed), stream) -----------------------------------------------------
INIT = 0  # network initialisation
TRAIN = 1  # training steps: fold_in(key, step), then each example's global index
SNAPSHOT = 2  # the sample grids of periodic snapshots: fold_in(key, step)
EVAL = 3  # the evaluation loss (the training draws of each example's global index)
SAMPLE = 4  # --mode sample / eval: sample i draws from fold_in(key, i)
BPD = 5  # bits/dim: fold_in(fold_in(key, pass), batch) for the Hutchinson probes
# controllable generation: fold_in(run_key(seed, SAMPLE), CONTROLLABLE), so its samples differ from --mode sample's
CONTROLLABLE = 7

# ---- the draws of one training / evaluation example: fold_in(example key, tag) ----------------------------------
EXAMPLE_T = 0  # its time t (continuous) or noise-level index (discrete)
EXAMPLE_NOISE = 1  # its Gaussian perturbation z
EXAMPLE_DROPOUT = 2  # its dropout masks (then fold_in of the layer's path)
EXAMPLE_PROJECTIONS = 3  # its random projections v (sliced score matching, ssm / ssm_vr)
EXAMPLE_LABEL_DROP = 4  # whether its class label is replaced by the null class (training.label_dropout)

# ---- the draws of one sample at sampler step s: fold_in(fold_in(example key, s), stream) -----------------------
PRIOR = 0  # the prior draw x_T (at step 0)
CORRECTOR = 1  # the corrector's noise (Langevin / ALD)
PREDICTOR = 2  # the predictor's noise (and DDIM's with eta > 0)
CONSTRAINT_AFTER_CORRECTOR = 3  # a constraint's observation noise after the corrector (controllable)
CONSTRAINT_AFTER_PREDICTOR = 4  # ... and after the predictor; unconstrained samples never draw these
SAMPLE_CLASS = 5  # its class (sampling.class_label=-1, a class-conditional model), at step 0

# ---- the 2-D default (score_jax.toy): fold_in(PRNGKey(config.seed), stream) -----------------------------------
TOY_INIT, TOY_TRAIN, TOY_DATA, TOY_EVAL, TOY_SAMPLE = range(5)  # initialisation, loss draws, data, metrics, samples
# within TOY_EVAL: the true samples, the floor's independent true sets, the evaluated samples, sliced W2's
# directions and the likelihood's Hutchinson probes
TOY_EVAL_TRUE, TOY_EVAL_FLOOR, TOY_EVAL_SAMPLES, TOY_EVAL_SLICES, TOY_EVAL_LIKELIHOOD = range(5)
TOY_SAMPLE_PC, TOY_SAMPLE_ODE = range(2)  # within the key of toy.sample: the PC and the ODE sampler

# ---- python -m score_jax.ablate on the 2-D default: fold_in(PRNGKey(config.seed), stream) ----------------------
ABLATE_TRUE = 101  # the true samples the cells are measured against
ABLATE_FLOOR = 102  # independent true sets for the noise floor (+ 1000 i for set i)
ABLATE_SAMPLE = 103  # the cells' samples (every cell the same prior draws)
ABLATE_SLICES = 104  # the random directions of sliced Wasserstein


def run_key(seed: int, stream: int) -> Array:
  """The key of one run stream: ``fold_in(PRNGKey(seed), stream)``."""
  return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


def example_keys(key: Array, batch_size: int, offset: Array | int = 0, stride: int = 1) -> Array:
  """Keys ``[batch_size]`` of the examples ``offset + stride * arange(batch_size)``: ``fold_in(key, index)``
  (``stride > 1``: a micro-batch of gradient accumulation, every ``stride``-th row of the batch)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(offset + stride * jnp.arange(batch_size))


def normal_draws(keys: Array, stream: int, step, shape) -> Array:
  """Standard normals ``[B, *shape]``, each example's from ``fold_in(fold_in(key_b, step), stream)``."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(jax.random.fold_in(k, step), stream), shape))(keys)
