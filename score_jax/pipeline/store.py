"""The sample and feature store of a run: uint8 sample chunks and the features extracted from them.

A ``--mode sample`` / ``--mode eval`` directory ``DIR/samples/<checkpoint>_<method>/`` holds::

  samples_<start>.npz                  uint8 images [n, H, W, C] and their indices, one file per chunk
  meta.json                            the settings the samples were drawn with (checked on resume)
  grid.png                             the first samples as a grid
  features_<tag>/features_<start>.npz  float32 pool3 and logits of a chunk, with the sha256 of its images

Every file is written atomically, so a killed run leaves whole chunks; features are tied to their chunk's
images by the images' sha256 and recomputed when the images change.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib

import numpy as np
from tqdm.auto import tqdm

from score_jax import features, fileio

__all__ = ["FEATURES_PREFIX", "FEATURE_BATCH", "features_folder", "features_path", "valid_chunk", "chunk_features",
           "sample_features", "load_features", "sample_chunks", "load_samples", "chunk_path"]

log = logging.getLogger("score_jax")

FEATURES_PREFIX = "features_"  # folder of a sample directory holding one feature network's features
FEATURE_BATCH = 200  # images per call of the feature network (the FID Inception at 299 x 299)


def chunk_path(directory: pathlib.Path, start: int) -> pathlib.Path:
  """The file of the sample chunk that starts at sample ``start``."""
  return pathlib.Path(directory) / f"samples_{start:07d}.npz"


def features_folder(samples_dir, feature_fn) -> pathlib.Path:
  """The folder of ``feature_fn``'s features in a sample directory (``features_<tag>``)."""
  return pathlib.Path(samples_dir) / f"{FEATURES_PREFIX}{features.feature_tag(feature_fn)}"


def features_path(features_dir: pathlib.Path, start: int) -> pathlib.Path:
  return features_dir / f"features_{start:07d}.npz"


def _images_digest(images: np.ndarray) -> str:
  """sha256 of a chunk's uint8 images (shape and bytes): ties stored features to the images they came from."""
  images = np.ascontiguousarray(images)
  return hashlib.sha256(repr(images.shape).encode() + images.tobytes()).hexdigest()


def _valid_features(path: pathlib.Path, count: int, digest: str) -> bool:
  """Whether ``path`` holds the features of ``count`` images whose :func:`_images_digest` is ``digest``."""
  if not path.exists():
    return False
  try:
    with np.load(path) as f:
      if len(f["pool3"]) != count or len(f["logits"]) != count:
        return False
      found = str(f["images_sha256"]) if "images_sha256" in f.files else None
  except Exception as e:  # a truncated or foreign file: redo the chunk's features
    log.warning("redoing unreadable features %s (%s)", path, e)
    return False
  if found != digest:  # the chunk was replaced by other images (or the file predates the digest)
    log.warning("redoing %s: its features are not those of the images in the sample chunk now", path)
    return False
  return True


def chunk_features(features_dir: pathlib.Path, start: int, count: int, samples_path: pathlib.Path,
                   images: np.ndarray | None, feature_fn, *, batch_size: int) -> int:
  """Features of one sample chunk, unless already saved for these very images: 1 if they were computed and
  written, else 0. The file records the images' sha256 (:func:`_images_digest`), so features are never reused
  for a chunk whose images changed."""
  path = features_path(features_dir, start)
  if images is None:  # a chunk already on disk (this run's resume, or another run's samples)
    with np.load(samples_path) as f:
      images = f["images"]
  digest = _images_digest(images)
  if _valid_features(path, count, digest):
    return 0
  feats = features.features_of([images], feature_fn, batch_size=batch_size, progress=False)
  fileio.savez(str(path), pool3=feats["pool3"].astype(np.float32), logits=feats["logits"].astype(np.float32),
               index=np.arange(start, start + count), images_sha256=np.asarray(digest))
  return 1


def sample_features(samples_dir, feature_fn, *, limit: int | None = None, batch_size: int = FEATURE_BATCH,
                    progress: bool = True) -> tuple[dict[str, np.ndarray], int]:
  """The features of the first ``limit`` (default: all) samples of a ``--mode sample`` directory, extracted
  chunk by chunk and stored beside the chunks as ``--mode eval`` stores them
  (``features_<tag>/features_<start>.npz``), so that features already there for the same images and the same
  network are read instead of recomputed.

  Returns:
    ``({'pool3': [N, D], 'logits': [N, K]} float64, the number of chunks whose features were computed)``.

  Raises:
    FileNotFoundError: no ``samples_*.npz`` chunks in ``samples_dir``.
    ValueError: the chunks do not follow each other (a chunk is missing).
  """
  directory = pathlib.Path(samples_dir)
  paths = _chunk_paths(directory)
  folder = features_folder(directory, feature_fn)
  folder.mkdir(exist_ok=True)
  seen = written = 0
  for path in tqdm(paths, desc="features", unit="chunk", disable=not progress):
    if limit is not None and seen >= limit:
      break
    with np.load(path) as f:
      images = f["images"]
      start = int(f["index"][0]) if "index" in f.files and len(f["index"]) else seen
    if start != seen:
      raise ValueError(f"{path} starts at sample {start}, but the chunks before it hold {seen} samples: a chunk is "
                       "missing (rerun --mode sample with the same settings to draw it).")
    written += chunk_features(folder, start, len(images), path, images, feature_fn, batch_size=batch_size)
    seen += len(images)
  total = seen if limit is None else min(seen, limit)
  if total == 0:
    raise ValueError(f"the sample chunks in {directory} hold no images.")
  return load_features(folder, total), written


def load_features(features_dir, num_samples: int) -> dict[str, np.ndarray]:
  """The pool3 features and logits of the first ``num_samples`` samples, from the chunks :func:`sample` saved
  in ``features_dir`` (float64 ``[N, D]`` / ``[N, K]``, in sample order)."""
  paths = sorted(pathlib.Path(features_dir).glob("features_*.npz"))
  parts: dict[str, list[np.ndarray]] = dict(pool3=[], logits=[])
  seen = 0
  for path in paths:
    if seen >= num_samples:
      break
    with np.load(path) as f:
      if int(f["index"][0]) != seen:
        raise ValueError(f"{path}: features of sample {int(f['index'][0])} where sample {seen} was expected; "
                         f"delete {features_dir} to extract them again.")
      take = min(len(f["index"]), num_samples - seen)
      for name in parts:
        parts[name].append(np.asarray(f[name][:take], np.float64))
    seen += take
  if seen < num_samples:
    raise ValueError(f"{features_dir} holds features of {seen} samples; {num_samples} were asked for.")
  return {name: np.concatenate(values) for name, values in parts.items()}


def valid_chunk(path: pathlib.Path, count: int, image_shape) -> bool:
  if not path.exists():
    return False
  try:
    with np.load(path) as f:
      return f["images"].shape == (count,) + tuple(image_shape) and f["images"].dtype == np.uint8
  except Exception as e:  # a truncated or foreign file: redo the chunk
    log.warning("redoing unreadable chunk %s (%s)", path, e)
    return False


def _chunk_paths(directory: pathlib.Path) -> list[pathlib.Path]:
  paths = sorted(pathlib.Path(directory).glob("samples_*.npz"))
  if not paths:
    raise FileNotFoundError(f"no samples_*.npz chunks in {directory} (python -m score_jax.main --mode sample writes "
                            "them).")
  return paths


def sample_chunks(directory, limit: int | None = None):
  """The uint8 chunks ``[n, H, W, C]`` of a ``--mode sample`` directory in index order, up to ``limit`` samples."""
  seen = 0
  for path in _chunk_paths(directory):
    with np.load(path) as f:
      images = f["images"]
    if limit is not None:
      images = images[:max(0, limit - seen)]
    seen += len(images)
    if len(images):
      yield images
    if limit is not None and seen >= limit:
      return


def load_samples(directory, limit: int | None = None) -> np.ndarray:
  """The uint8 samples ``[N, H, W, C]`` of a ``--mode sample`` directory, in index order (up to ``limit``)."""
  return np.concatenate(list(sample_chunks(directory, limit)))
