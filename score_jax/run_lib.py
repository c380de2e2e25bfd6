"""Deprecated: the image pipeline moved to :mod:`score_jax.pipeline`; these names stay for one release."""

from score_jax.pipeline import (
    ALL_CHECKPOINTS,
    Experiment,
    check_config,
    dry_run,
    evaluate,
    load_features,
    load_params,
    load_samples,
    make_sample_fn,
    sample,
    sample_chunks,
    sample_features,
    setup,
    summary_line,
    train_and_evaluate,
)
from score_jax.randomness import BPD as STREAM_BPD
from score_jax.randomness import EVAL as STREAM_EVAL
from score_jax.randomness import INIT as STREAM_INIT
from score_jax.randomness import SAMPLE as STREAM_SAMPLE
from score_jax.randomness import SNAPSHOT as STREAM_SNAPSHOT
from score_jax.randomness import TRAIN as STREAM_TRAIN

__all__ = ["Experiment", "setup", "check_config", "train_and_evaluate", "dry_run", "evaluate", "sample",
           "load_samples", "sample_chunks", "sample_features", "load_features", "load_params", "make_sample_fn",
           "summary_line", "ALL_CHECKPOINTS", "STREAM_INIT", "STREAM_TRAIN", "STREAM_SNAPSHOT", "STREAM_EVAL",
           "STREAM_SAMPLE", "STREAM_BPD"]
