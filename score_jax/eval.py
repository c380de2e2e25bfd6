"""FID / Inception Score / KID of sample sets, and FID reference statistics of datasets.

  # reference statistics of a train split (every example once, as uint8 images; the original's loader
  # dropped the last partial batch, this one does not)
  python -m score_jax.eval stats --dataset CIFAR10 --split train --weights inception.npz --out cifar10_train.npz
  python -m score_jax.eval stats --dataset folder --root ../shared/data/cifar10-jpeg.tar.gz --image_size 32 \
      --weights inception.npz --out cifar10_jpeg_train.npz

  # metrics of a --mode sample directory against those statistics
  python -m score_jax.eval metrics --samples runs/ve/samples/step_N_pc --stats cifar10_train.npz \
      --weights inception.npz --out metrics.json

``metrics`` stores each chunk's features beside the samples (``features_<weights hash>/``, the folder
``--mode eval`` writes) and reuses the ones already there for the same images, so a second run, or a run
after ``--mode eval`` of the same samples, feeds no image again (``--no_store_features`` writes nothing).

Features come from the FID Inception-v3 (:mod:`score_jax.inception`) whose weights the user converts once
(``python -m score_jax.inception convert ...``; nothing is downloaded). Every function here also takes a
``feature_fn(images float [N, H, W, 3] in [0, 1]) -> {'pool3': [N, D], 'logits': [N, K]}`` so that another
feature network (or a cheap one in tests) can stand in.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import sys
import time
from typing import Callable, Iterable, Mapping, Sequence

import ml_collections
import numpy as np
from tqdm.auto import tqdm

from score_jax import cli, datasets, fileio, metrics

__all__ = ["inception_feature_fn", "feature_tag", "load_reference_stats", "features_of", "dataset_features",
           "compute_stats", "metrics_of_features", "sample_metrics", "main"]

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


def _data_config(dataset: str, *, root: str = "", data_dir: str = "", image_size: int = 32, category: str = "",
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


def sample_metrics(samples_dir, feature_fn: FeatureFn, *, stats: str | None = None, reference_features=None,
                   batch_size: int = 200, limit: int | None = None, is_splits: int = 10,
                   progress: bool = True, store_features: bool = True) -> dict:
  """FID (against ``stats``), Inception Score and KID (against ``reference_features`` [M, D], when given)
  of the uint8 samples of a ``--mode sample`` directory (:func:`metrics_of_features` of their features).

  With ``store_features`` (the default) the features are those ``--mode eval`` stores beside the chunks
  (``features_<tag>/``, :func:`score_jax.run_lib.sample_features`): chunks whose features are already there,
  for the same images and the same network, are not fed again, and the ones computed are stored. With
  ``store_features=False`` nothing is written and every image is fed.
  """
  reference_stats = load_reference_stats(stats, feature_fn) if stats else None  # before any feature work
  from score_jax import run_lib  # the reader of the chunks run_lib.sample writes

  if store_features:
    feats, written = run_lib.sample_features(samples_dir, feature_fn, limit=limit, batch_size=batch_size,
                                             progress=progress)
  else:
    feats, written = features_of(run_lib.sample_chunks(samples_dir, limit), feature_fn, batch_size=batch_size,
                                 total=limit, progress=progress), None
  result = metrics_of_features(feats, reference_stats=reference_stats, reference_features=reference_features,
                               is_splits=is_splits)
  if written is not None:
    result["feature_chunks_computed"] = written
  return result


# ---- command line -----------------------------------------------------------------------------------------


def parser() -> cli.ArgumentParser:
  """``stats`` and ``metrics``, each with ``--help``."""
  p = cli.ArgumentParser(prog="python -m score_jax.eval", description=__doc__.split("\n\n")[0], epilog=__doc__,
                         common_flags=False)
  sub = p.add_subparsers(dest="command", required=True, metavar="{stats,metrics}")
  s = sub.add_parser("stats", help="FID reference statistics of a dataset split")
  s.add_argument("--dataset", required=True, help="tfds name (CIFAR10, SVHN, CELEBA, LSUN), 'folder' or 'npz'")
  s.add_argument("--root", default="", help="folder / .tar.gz (dataset 'folder') or .npz (dataset 'npz')")
  s.add_argument("--data_dir", default="", help="tfds data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  s.add_argument("--category", default="", help="LSUN category")
  s.add_argument("--image_size", type=int, default=32, help="images are resized / cropped to this (default: 32)")
  s.add_argument("--split", default="train", choices=["train", "test"])
  s.add_argument("--limit", type=int, default=None, help="only the first N examples (default: all)")
  s.add_bool("save_features", False, "Also store pool3 features (for KID) and logits.")
  m = sub.add_parser("metrics", help="FID / IS / KID of a --mode sample directory")
  m.add_argument("--samples", required=True, help="directory with samples_*.npz chunks")
  m.add_argument("--stats", default=None, help="reference statistics .npz for FID (and KID if it holds pool_3)")
  m.add_argument("--limit", type=int, default=None, help="only the first N samples (default: all)")
  m.add_argument("--is_splits", type=int, default=10, help="Inception Score splits (score_sde reports 1)")
  m.add_argument("--out", default=None, help="write the metrics as JSON here")
  m.add_bool("store_features", True, "Reuse and store the features in SAMPLES/features_<weights hash>/, as "
             "--mode eval does (--no_store_features: feed every sample and write nothing beside them)",
             false_aliases=("--no_store_features",))
  for q in (s, m):
    q.add_argument("--weights", required=True, help="converted FID Inception weights (.npz; python -m "
                   "score_jax.inception convert writes them)")
    q.add_argument("--sha256", default=None, help="expected sha256 of the weights file")
    q.add_argument("--batch_size", type=int, default=200)
    q.add_bool("progress", True, "Show progress bars.", false_aliases=("--no_progress",))
  s.add_argument("--out", required=True, help="the .npz to write (mu, sigma); never overwritten")
  return p


def _main(args) -> None:
  if args.batch_size < 1:
    raise ValueError(f"--batch_size must be positive; got {args.batch_size}.")
  if args.command == "stats":
    if pathlib.Path(args.out).exists():
      raise FileExistsError(f"{args.out} exists; choose another --out (nothing was overwritten).")
    cli.check_output_dir(os.path.dirname(os.path.abspath(args.out)), "--out")
    config = _data_config(args.dataset, root=args.root, data_dir=args.data_dir, image_size=args.image_size,
                          category=args.category)
    datasets.get_dataset(config, args.split, batch_size=args.batch_size, process_index=0, process_count=1)
    feature_fn = inception_feature_fn(args.weights, args.sha256)
    result = compute_stats(config, args.split, feature_fn, args.out, batch_size=args.batch_size, limit=args.limit,
                           save_features=args.save_features, progress=args.progress)
  else:
    if not os.path.isdir(args.samples):
      raise FileNotFoundError(f"--samples {args.samples} is not a directory; give the samples/step_N_* directory "
                              "that --mode sample wrote.")
    reference = None
    if args.stats:
      metrics.load_stats(args.stats)
      with np.load(args.stats) as f:
        reference = f["pool_3"] if "pool_3" in f.files else None
    feature_fn = inception_feature_fn(args.weights, args.sha256)
    result = sample_metrics(args.samples, feature_fn, stats=args.stats, reference_features=reference,
                            batch_size=args.batch_size, limit=args.limit, is_splits=args.is_splits,
                            progress=args.progress, store_features=args.store_features)
    if args.out:
      fileio.write_json(args.out, result)
  print(json.dumps(result, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
  """``python -m score_jax.eval`` on ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
  return cli.run(_main, argv, parser=parser())


if __name__ == "__main__":
  sys.exit(main())
