"""Deprecated: the image pipeline moved to :mod:`score_jax.pipeline`; these names stay for one release."""

from score_jax import randomness
from score_jax.pipeline import *  # noqa: F403 (every public name of the pipeline, as run_lib had them)
from score_jax.pipeline import __all__ as _pipeline_names

STREAM_INIT, STREAM_TRAIN, STREAM_SNAPSHOT = randomness.INIT, randomness.TRAIN, randomness.SNAPSHOT
STREAM_EVAL, STREAM_SAMPLE, STREAM_BPD = randomness.EVAL, randomness.SAMPLE, randomness.BPD

__all__ = [*_pipeline_names, "STREAM_INIT", "STREAM_TRAIN", "STREAM_SNAPSHOT", "STREAM_EVAL", "STREAM_SAMPLE",
           "STREAM_BPD"]
