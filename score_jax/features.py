"""Features of images and the sample-set metrics computed from them: FID statistics, FID / IS / KID.

Features come from the FID Inception-v3 (:mod:`score_jax.inception`) whose weights the user converts once
(``python -m score_jax.inception convert ...``; nothing is downloaded). Every function here also takes a
``feature_fn(images float [N, H, W, 3] in [0, 1]) -> {'pool3': [N, D], 'logits': [N, K]}`` so that another
feature network (or a cheap one in tests) can stand in. The command line over these is
``python -m score_jax.eval``; the pipeline's sample and feature store is :mod:`score_jax.pipeline.store`.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import time
from typing import Callable, Iterable, Mapping

import ml_collections
import numpy as np
from tqdm.auto import tqdm

from score_jax import datasets, fileio, metrics

__all__ = ["FeatureFn", "inception_feature_fn", "feature_tag", "load_reference_stats", "load_reference_features",
           "features_of", "data_config", "dataset_features", "compute_stats", "metrics_of_features"]

FeatureFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
_TAG_HASH_CHARS = 16  # hex digits of the weights' sha256 in a feature tag: enough to tell weight files apart


def inception_feature_fn(weights: str, sha256: str | None = None) -> FeatureFn:
  """The FID Inception-v3 as a :data:`FeatureFn`, weights from the converted ``.npz`` at ``weights``."""
  import jax

  from score_jax import inception

  variables = inception.load_weights(weights, sha256=sha256)
  apply = jax.jit(lambda v, x: inception.apply(v, x))

  def fn(images: np.ndarray) -> dict[str, np.ndarray]:
    out = apply(variables, images)
    return {k: np.asarray(out[k]) for k in ("pool3", "logits")}

  fn.tag = f"inception_{fileio.sha256_file(os.fspath(weights))[:_TAG_HASH_CHARS]}"
  fn.feature_dim = inception.POOL3_FEATURES
  return fn


def load_reference_features(stats: str | None):
  """The pool3 features ``pool_3`` [M, D] stored in a statistics file (``eval stats --save_features``), for KID;
  None without a file or without features in it."""
  if not stats:
    return None
  with np.load(stats) as f:
    return f["pool_3"] if "pool_3" in f.files else None


def load_reference_stats(stats: str, feature_fn: FeatureFn) -> tuple[np.ndarray, np.ndarray]:
  """``(mu, sigma)`` of the FID statistics file ``stats``, read once, refused when their dimension differs from
  ``feature_fn.feature_dim`` (when the function states one, as :func:`inception_feature_fn` does): call it
  before any image is drawn or fed."""
  mu, sigma = metrics.load_stats(stats)
  dim = getattr(feature_fn, "feature_dim", None)
  if dim is not None and mu.shape[0] != dim:
    raise ValueError(f"FID statistics {stats!r} are {mu.shape[0]}-dimensional, but the feature network gives "
                     f"{dim}-dimensional pool3 features; compute statistics with the same network (python -m "
                     "score_jax.eval stats --weights ...).")
  return mu, sigma


def feature_tag(feature_fn: FeatureFn) -> str:
  """A name for the features of ``feature_fn``, used to keep stored features of different networks apart.

  :func:`inception_feature_fn` tags its function with the weights' sha256 (``inception_<hash>``); any other
  callable is named by its ``tag`` attribute if it has one, else by its module and qualified name.
  """
  tag = getattr(feature_fn, "tag", None)
  if tag is None:
    tag = f"{getattr(feature_fn, '__module__', 'fn')}.{getattr(feature_fn, '__qualname__', type(feature_fn).__name__)}"
  tag = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(tag))
  if not tag.strip("._"):
    raise ValueError(f"feature_fn.tag={tag!r} cannot name a folder; give it letters or digits.")
  return tag


def _check_images(images: np.ndarray, where: str) -> np.ndarray:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"{where}: expected RGB images [N, H, W, 3]; got shape {images.shape}.")
  if images.dtype != np.uint8:
    raise ValueError(f"{where}: expected uint8 images (0..255); got {images.dtype}.")
  return images


def features_of(images: Iterable[np.ndarray], feature_fn: FeatureFn, *, batch_size: int = 200,
                total: int | None = None, progress: bool = True) -> dict[str, np.ndarray]:
  """pool3 features and logits of uint8 image batches ``[n, H, W, 3]``, concatenated in order.

  Images are converted to float in [0, 1] (``x / 255``) and fed ``batch_size`` at a time (the last batch is
  padded to ``batch_size`` so that one compiled shape serves all, and the padding dropped).
  """
  pool3, logits = [], []
  bar = tqdm(total=total, desc="features", unit="img", disable=not progress)
  buffer: list[np.ndarray] = []

  def flush(chunk: np.ndarray) -> None:
    n = len(chunk)
    padded = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)]) if n < batch_size \
        else chunk
    out = feature_fn(padded.astype(np.float32) / 255.0)
    pool3.append(np.asarray(out["pool3"], np.float64)[:n])
    logits.append(np.asarray(out["logits"], np.float64)[:n])
    bar.update(n)

  for batch in images:
    buffer.append(_check_images(batch, "features_of"))
    pending = np.concatenate(buffer)
    while len(pending) >= batch_size:
      flush(pending[:batch_size])
      pending = pending[batch_size:]
    buffer = [pending] if len(pending) else []
  if buffer:
    flush(np.concatenate(buffer))
  bar.close()
  if not pool3:
    raise ValueError("features_of got no images.")
  return dict(pool3=np.concatenate(pool3), logits=np.concatenate(logits))


def data_config(dataset: str, *, root: str = "", data_dir: str = "", image_size: int = 32, category: str = "",
                 tfrecords_path: str = "") -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = ml_collections.ConfigDict(dict(
      dataset=dataset, root=root, data_dir=data_dir, image_size=image_size, num_channels=3, centered=False,
      random_flip=False, uniform_dequantization=False, category=category, tfrecords_path=tfrecords_path))
  return config


def dataset_features(config: ml_collections.ConfigDict, split: str, feature_fn: FeatureFn, *, batch_size: int = 200,
                     limit: int | None = None, progress: bool = True) -> dict[str, np.ndarray]:
  """Features of every example of ``split`` of ``config.data`` exactly once, as uint8 images, in order."""
  data_config = ml_collections.ConfigDict(config.to_dict())  # a deep copy: the caller's config stays as it is
  data_config.data.centered = False
  data_config.data.uniform_dequantization = False
  ds = datasets.get_dataset(data_config, split, batch_size=batch_size, process_index=0, process_count=1)
  count = ds.num_examples if limit is None else min(int(limit), ds.num_examples)

  def batches():
    for index in range(math.ceil(count / batch_size)):
      batch = ds.eval_batch(index)
      keep = batch["mask"] & (index * batch_size + np.arange(len(batch["mask"])) < count)
      yield np.round(batch["image"][keep] * 255.0).astype(np.uint8)  # exact: the loader gives k / 255

  return features_of(batches(), feature_fn, batch_size=batch_size, total=count, progress=progress)


def compute_stats(config: ml_collections.ConfigDict, split: str, feature_fn: FeatureFn, out: str, *,
                  batch_size: int = 200, limit: int | None = None, save_features: bool = False,
                  progress: bool = True) -> dict:
  """FID reference statistics (``mu``, ``sigma`` of pool3) of a dataset split, written atomically to ``out``.

  Refuses to replace an existing ``out``. With ``save_features`` the pool3 features (``pool_3``, for KID)
  and the logits are stored too.
  """
  out_path = pathlib.Path(out)
  if out_path.exists():
    raise FileExistsError(f"{out} exists; choose another --out (nothing was overwritten).")
  if out_path.suffix != ".npz":
    raise ValueError(f"--out must end in .npz; got {out!r}.")
  t0 = time.time()
  feats = dataset_features(config, split, feature_fn, batch_size=batch_size, limit=limit, progress=progress)
  mu, sigma = metrics.feature_statistics(feats["pool3"])
  extra = dict(num_examples=np.int64(len(feats["pool3"])), dataset=np.str_(config.data.dataset), split=np.str_(split))
  if save_features:
    extra.update(pool_3=feats["pool3"].astype(np.float32), logits=feats["logits"].astype(np.float32))
  out_path.parent.mkdir(parents=True, exist_ok=True)
  metrics.save_stats(str(out_path), mu, sigma, **extra)
  return dict(out=str(out_path), num_examples=int(len(feats["pool3"])), dim=int(mu.shape[0]),
              seconds=time.time() - t0)


def metrics_of_features(features: Mapping[str, np.ndarray], *, reference_stats=None, reference_features=None,
                        is_splits: int = 10) -> dict:
  """FID against ``reference_stats`` ``(mu, sigma)`` (when given), Inception Score (``is_splits`` splits, fewer
  for a handful of samples; also over all samples at once, as score_sde computes it) and KID against
  ``reference_features`` [M, D] (when given) of ``{'pool3': [N, D], 'logits': [N, K]}``."""
  pool3, logits = np.asarray(features["pool3"], np.float64), np.asarray(features["logits"], np.float64)
  result: dict = dict(num_samples=int(len(pool3)))
  if reference_stats is not None:
    mu, sigma = metrics.feature_statistics(pool3)
    result["fid"] = metrics.fid(mu, sigma, *reference_stats)
  splits = min(is_splits, len(logits))  # a handful of samples (smoke runs) cannot fill 10 splits
  result["inception_score"], result["inception_score_std"] = metrics.inception_score(logits, splits=splits)
  result["inception_score_splits"] = splits
  # score_sde's own number: one score over all samples (tfgan's classifier_score_from_logits on every logit)
  result["inception_score_one_split"] = metrics.inception_score(logits, splits=1)[0]
  if reference_features is not None:
    result["kid"], result["kid_std"] = metrics.kid(pool3, reference_features)
  return result
