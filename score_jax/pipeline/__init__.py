"""The pipeline: what ``python -m score_jax.main`` runs for image configs, and the one place that knows the
layout of a work directory.

  DIR/.lock                        while a train / eval / sample call runs: its lock (pipeline.workdir), naming it
  DIR/checkpoints/<step>/          orbax checkpoints (score_jax.checkpoints): params, EMA, optimizer state, step
  DIR/tensorboard/                 TensorBoard scalars and sample grids (tensorboardX: no TensorFlow needed)
  DIR/train_log.jsonl              one JSON line per logged step (loss, grad norm, images/s, eval loss)
  DIR/snapshots/step_<k>/          sample grid (grid.png) and samples (samples.npz) at each periodic snapshot
  DIR/eval/<checkpoint>/<hash>.json  --mode eval: one record per settings (pipeline.evaluate.record_path), never
                                   replaced by another settings' result; DIR/eval/<checkpoint>.json the newest:
                                   test loss, bits/dim and sample metrics, with their settings
                                   (classifiers: test accuracy, overall and per noise-level bin)
  DIR/samples/<checkpoint>_<method>/  --mode sample: the sample and feature store (pipeline.store)

Modules: :mod:`.experiment` (config -> the run's parts, parameter loading), :mod:`.writer` (metrics, host 0),
:mod:`.training` (the loop and the dry run), :mod:`.evaluate` with one module per evaluator in
:mod:`.evaluators`, :mod:`.sample` (``--mode sample``) and :mod:`.store` (sample chunks and their features);
:mod:`.toy` runs the embedded 2-D default on the same blocks.

Randomness comes from ``config.seed`` alone, through the named streams of :mod:`score_jax.randomness`: a
resumed run continues exactly, and the numbers do not depend on the device count (nor, for samples, on
``eval.batch_size``; see :func:`score_jax.pipeline.sample.sample` for the one exception).
"""

from score_jax.pipeline.evaluate import evaluate, evaluate_all
from score_jax.pipeline.experiment import (
    ALL_CHECKPOINTS,
    Experiment,
    check_config,
    load_classifier,
    load_params,
    make_sample_fn,
    sampling_score_fn,
    score_fn,
    setup,
    summary_line,
    to_uint8,
)
from score_jax.pipeline.sample import sample
from score_jax.pipeline.store import load_features, load_samples, sample_chunks, sample_features
from score_jax.pipeline.training import dry_run, train_and_evaluate
from score_jax.pipeline.workdir import WorkdirLockedError

__all__ = ["ALL_CHECKPOINTS", "Experiment", "check_config", "dry_run", "evaluate", "evaluate_all", "load_classifier",
           "load_features", "load_params", "load_samples", "make_sample_fn", "sample", "sample_chunks",
           "sample_features", "sampling_score_fn", "score_fn",
           "setup", "summary_line", "to_uint8", "train_and_evaluate",
           "WorkdirLockedError"]
