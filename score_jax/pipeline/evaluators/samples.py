"""Sample metrics (``eval.enable_sampling``): FID / Inception Score / KID of samples drawn from a checkpoint, or
of a ``--mode sample`` directory (``python -m score_jax.eval metrics``)."""

from __future__ import annotations

import jax
import ml_collections

from score_jax import features, inception, validation
from score_jax.pipeline import sample as sample_mode
from score_jax.pipeline import store
from score_jax.pipeline.experiment import Experiment

__all__ = ["inception_weights", "inception_feature_fn", "Reference", "prepare", "run", "sample_metrics"]


def inception_weights(config: ml_collections.ConfigDict) -> str:
  """The converted FID Inception weights of ``eval.inception_weights`` (or ``$SCORE_JAX_INCEPTION_WEIGHTS``)."""
  try:
    return inception.weights_path(config.eval.get("inception_weights", "") or None)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"eval.enable_sampling needs the FID Inception weights (eval.inception_weights): {e}") \
        from None


def inception_feature_fn(config: ml_collections.ConfigDict) -> features.FeatureFn:
  """The FID Inception of ``eval.inception_weights`` with the resize convention of ``eval.resize`` ('tf' when
  the config has none)."""
  return features.inception_feature_fn(inception_weights(config), resize=config.eval.get("resize", None) or None)


class Reference:
  """The feature network and the reference statistics of one evaluation, loaded and checked before sampling.

  Args:
    config: gives ``eval.fid_stats`` and ``eval.inception_weights``.
    feature_fn: replaces the FID Inception (e.g. in tests); default: the weights of the config.
  """

  def __init__(self, config: ml_collections.ConfigDict, feature_fn=None):
    self.feature_fn = feature_fn if feature_fn is not None else inception_feature_fn(config)
    self.stats_path = config.eval.get("fid_stats", "") or None
    # the statistics' dimension is checked against the network's before any sample is drawn
    self.stats = features.load_reference_stats(self.stats_path, self.feature_fn) if self.stats_path else None


def prepare(config: ml_collections.ConfigDict, feature_fn=None) -> Reference:
  """:class:`Reference` of ``config``, after checking ``eval.num_samples``."""
  validation.check_int(config.eval.num_samples, "eval.num_samples")
  return Reference(config, feature_fn)


def run(exp: Experiment, params, tag: str, workdir, reference: Reference, *, progress: bool = True) -> dict:
  """``eval.num_samples`` samples drawn as ``--mode sample`` draws them (resumable chunks, per-sample seeds), their
  features extracted chunk by chunk as they are drawn, then :func:`score_jax.features.metrics_of_features`."""
  drawn = sample_mode.draw_samples(exp, params, tag, workdir, int(exp.config.eval.num_samples), progress=progress,
                                   feature_fn=reference.feature_fn)
  result = dict(samples=drawn["directory"])
  if jax.process_index() == 0:  # the host that wrote the chunks and their features
    feats = store.load_features(drawn["features"], drawn["num_samples"])
    result.update(features.metrics_of_features(
        feats, reference_stats=reference.stats,
        reference_features=features.load_reference_features(reference.stats_path),
        has_logits=getattr(reference.feature_fn, "has_logits", None)))
  return result


def sample_metrics(samples_dir, feature_fn: features.FeatureFn, *, stats: str | None = None,
                   reference_features=None, batch_size: int = store.FEATURE_BATCH, limit: int | None = None,
                   is_splits: int = 10, progress: bool = True, store_features: bool = True) -> dict:
  """FID (against ``stats``), Inception Score and KID (against ``reference_features`` [M, D], when given)
  of the uint8 samples of a ``--mode sample`` directory (:func:`score_jax.features.metrics_of_features`).

  With ``store_features`` (the default) the features are those ``--mode eval`` stores beside the chunks
  (:func:`score_jax.pipeline.store.sample_features`): chunks whose features are already there, for the same
  images and the same network, are not fed again, and the ones computed are stored. With
  ``store_features=False`` nothing is written and every image is fed.
  """
  reference_stats = features.load_reference_stats(stats, feature_fn) if stats else None  # before feature work
  if store_features:
    feats, written = store.sample_features(samples_dir, feature_fn, limit=limit, batch_size=batch_size,
                                           progress=progress)
  else:
    feats, written = features.features_of(store.sample_chunks(samples_dir, limit), feature_fn,
                                          batch_size=batch_size, total=limit, progress=progress), None
  result = features.metrics_of_features(feats, reference_stats=reference_stats,
                                        reference_features=reference_features, is_splits=is_splits,
                                        has_logits=getattr(feature_fn, "has_logits", None))
  if written is not None:
    result["feature_chunks_computed"] = written
  return result
