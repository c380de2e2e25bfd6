"""Image datasets for training and evaluation, read without TensorFlow.

Sources (``config.data.dataset``):

- tfds names as in the original configs: ``CIFAR10`` (tfds ``cifar10``), ``SVHN`` (``svhn_cropped``), ``CELEBA``
  (``celeb_a``), ``LSUN`` (``lsun/<data.category>``). Read from ``data.data_dir`` (else ``$TFDS_DATA_DIR``, else
  ``~/tensorflow_datasets``).
- ``FFHQ`` / ``CelebAHQ``: the original's TFRecord file at ``data.tfrecords_path`` (or ``data.root``) holding
  ``tf.train.Example`` records with ``shape`` [C, H, W] and raw uint8 ``data``.
- ``folder``: ``data.root`` is a folder, or a ``.tar.gz`` / ``.tgz`` / ``.tar`` of one, of class subfolders of
  images. When it has ``train/`` or ``test/`` subfolders, the split reads that subfolder; otherwise both splits
  read the whole folder. Labels are the indices of the sorted class-folder names. A ``.tar.gz`` is read once,
  sequentially, into memory (gzip allows no random access): right for archives of a few GB at most, such as
  ``../shared/data/cifar10-jpeg.tar.gz``; unpack bigger ones and point ``data.root`` at the folder.
- ``npz``: ``data.root`` is an ``.npz`` with ``images`` [N, H, W, C] uint8 and optional ``labels`` [N].

Why tfds ``data_source`` (ArrayRecord) and not ``tfds.load`` / ``as_numpy``: ``tf.data`` pipelines need
TensorFlow, a ~600 MB dependency that also competes with JAX for the accelerator, and they make the order of
examples depend on shuffle buffers and thread timing, so a run cannot resume at the exact batch it stopped at.
``builder.as_data_source`` reads ArrayRecord shards with random access and decodes features with NumPy and PIL,
without TensorFlow; random access is what makes the batch at step ``s`` a pure function of ``(seed, s)``. The
cost: the data must be prepared in the ``array_record`` file format (``tfds build cifar10 --file_format
array_record``; a dataset already built as TFRecord is converted with ``tfds convert_format``, which needs
TensorFlow, once, on any machine). The tfds builder is opened with ``tfds.builder_from_directory`` on the version
folder found on disk, which reads only that folder: nothing here can start a download. The same reasoning gives
a small TFRecord index reader for FFHQ / CelebAHQ (it skips the CRC checks) instead of ``tf.data``.

Preprocessing follows the original ``datasets.py``, in NumPy with PIL for decoding and resizing: CIFAR-10 and
SVHN are resized to ``image_size`` (antialiased bilinear; a no-op at their native 32x32); CelebA takes the
central 140x140 crop and resizes it; LSUN at 128 resizes the short side and crops the centre, other sizes crop
the central square and resize it (bicubic); the other sources must already be ``image_size`` square. Resizing
happens on uint8 images (PIL rounds where ``tf.image.resize`` kept float32: at most 1/510 apart). Then a random
horizontal flip (``data.random_flip``, training stream only) and either, in float32, ``x / 255`` in [0, 1] and
the data scaler (``data.centered``: [-1, 1], else [0, 1]), or uniform dequantization ``(x + u) / 256`` with
``u ~ U[0, 1)`` (``data.uniform_dequantization``; :func:`score_jax.likelihood.dequantize_uniform`, kept inside
each value's bin, scaled to [-1, 1) when centered).

Order and randomness are derived, never carried. The training stream is the concatenation of epochs, epoch
``e`` being the permutation ``default_rng([seed, 0, e])`` of the examples; global batch ``s`` is items
``[s B, (s + 1) B)`` of it, so no example is dropped and batches may straddle epochs. The flip and
dequantization noise of stream item ``i`` come from ``default_rng([seed, 1, i])``: an item's augmentation does
not depend on the batch size or on the number of hosts. Host ``p`` of ``P`` gets the contiguous slice
``[p B / P, (p + 1) B / P)`` of each global batch. The evaluation pass reads every example exactly once in
order; its last batch is padded (zeros) and a boolean ``mask`` marks real examples (the original dropped it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import itertools
import math
import os
import pathlib
import queue
import re
import struct
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from PIL import Image

from score_jax import image_files, likelihood

__all__ = [
    "DATASETS", "Dataset", "get_dataset", "get_data_scaler", "get_data_inverse_scaler", "scale", "inverse_scale",
    "tfds_data_dir",
]

# Pixel values of the 8-bit images every source yields.
_BITS = 8
_NUM_LEVELS = 2**_BITS
_MAX_LEVEL = _NUM_LEVELS - 1
# CelebA's central crop before resizing, as the original (and NCSNv2 before it).
_CELEBA_CROP = 140
# LSUN at this size resizes the short side then crops; other sizes crop then resize (the original's two paths).
_LSUN_RESIZE_THEN_CROP_SIZE = 128
# Second entry of the SeedSequence entropy: independent streams for the order, the augmentation of training
# stream items and the dequantization noise of the evaluation pass.
_ORDER_STREAM, _AUGMENT_STREAM, _EVAL_STREAM = 0, 1, 2
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
_SPLIT_DIRS = {"train": "train", "eval": "test"}
_SPLIT_ALIASES = {"train": "train", "eval": "eval", "test": "eval", "validation": "eval"}


# --- Scalers (the original's get_data_scaler / get_data_inverse_scaler) ------------------------------------------


def scale(x, centered: bool):
  """Data in [0, 1] to the model's range: [-1, 1] when ``centered``, else unchanged."""
  return x * 2.0 - 1.0 if centered else x


def inverse_scale(x, centered: bool):
  """The model's range back to [0, 1] (inverse of :func:`scale`)."""
  return (x + 1.0) / 2.0 if centered else x


def get_data_scaler(config: ml_collections.ConfigDict) -> Callable:
  """``x -> scale(x, config.data.centered)``; works on NumPy and JAX arrays."""
  return functools.partial(scale, centered=bool(config.data.centered))


def get_data_inverse_scaler(config: ml_collections.ConfigDict) -> Callable:
  """``x -> inverse_scale(x, config.data.centered)``; works on NumPy and JAX arrays."""
  return functools.partial(inverse_scale, centered=bool(config.data.centered))


# --- Resizing (uint8 [H, W, C] -> uint8 [h, w, C]) ---------------------------------------------------------------


def _resize(image: np.ndarray, height: int, width: int, resample: int) -> np.ndarray:
  """Antialiased resize (PIL widens the filter when shrinking, as ``tf.image.resize(antialias=True)``)."""
  if image.shape[:2] == (height, width):
    return image
  channels = [Image.fromarray(np.ascontiguousarray(image[..., c])) for c in range(image.shape[-1])]
  return np.stack([np.asarray(ch.resize((width, height), resample=resample)) for ch in channels], axis=-1)


def _central_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
  top, left = (image.shape[0] - height) // 2, (image.shape[1] - width) // 2
  return image[top:top + height, left:left + width]


def _resize_small(image: np.ndarray, size: int, resample: int = Image.BILINEAR) -> np.ndarray:
  """Resize so that the short side is ``size``, keeping the aspect ratio (the original's ``resize_small``)."""
  h, w = image.shape[:2]
  ratio = size / min(h, w)
  return _resize(image, round(h * ratio), round(w * ratio), resample)


def _resize_op(image: np.ndarray, size: int) -> np.ndarray:  # CIFAR-10, SVHN
  return _resize(image, size, size, Image.BILINEAR)


def _celeba_op(image: np.ndarray, size: int) -> np.ndarray:
  return _resize_small(_central_crop(image, _CELEBA_CROP, _CELEBA_CROP), size)


def _lsun_op(image: np.ndarray, size: int) -> np.ndarray:
  if size == _LSUN_RESIZE_THEN_CROP_SIZE:
    return _central_crop(_resize_small(image, size), size, size)
  crop = min(image.shape[:2])
  return _resize(_central_crop(image, crop, crop), size, size, Image.BICUBIC)


def _identity_op(image: np.ndarray, size: int) -> np.ndarray:
  del size
  return image


@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
  name: str  # tfds name; "{category}" is filled from data.category
  train_split: str
  eval_split: str
  preprocess_fn: Callable[[np.ndarray, int], np.ndarray]


# The registry of dataset names (the original's, plus "folder" and "npz").
DATASETS: dict[str, Any] = {
    "CIFAR10": _TfdsSpec("cifar10", "train", "test", _resize_op),
    "SVHN": _TfdsSpec("svhn_cropped", "train", "test", _resize_op),
    "CELEBA": _TfdsSpec("celeb_a", "train", "validation", _celeba_op),
    "LSUN": _TfdsSpec("lsun/{category}", "train", "validation", _lsun_op),
    "FFHQ": "tfrecords",
    "CelebAHQ": "tfrecords",
    "folder": "folder",
    "npz": "npz",
}


# --- Sources: random access to (uint8 image [H, W, C], label) ----------------------------------------------------


class _ArraySource:
  """Images held in one uint8 array (npz)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray | None):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.images)

  def read(self, index: int) -> tuple[np.ndarray, int | None]:
    return self.images[index], None if self.labels is None else int(self.labels[index])


class _EncodedSource:
  """Encoded image files: ``load_fn(key) -> bytes`` for each key, with labels."""

  def __init__(self, keys: Sequence[str], labels: np.ndarray, load_fn: Callable[[str], bytes], num_channels: int,
               where: str):
    self.keys, self.labels, self.load_fn, self.num_channels, self.where = keys, labels, load_fn, num_channels, where

  def __len__(self) -> int:
    return len(self.keys)

  def read(self, index: int) -> tuple[np.ndarray, int | None]:
    key = self.keys[index]
    return image_files.decode(self.load_fn(key), self.num_channels, f"{key!r} in {self.where}"), int(self.labels[index])


class _TfdsSource:
  """A tfds ArrayRecord data source (random access, decoded with NumPy / PIL)."""

  def __init__(self, data_source, num_channels: int):
    self.data_source, self.num_channels = data_source, num_channels

  def __len__(self) -> int:
    return len(self.data_source)

  def read(self, index: int) -> tuple[np.ndarray, int | None]:
    example = self.data_source[index]
    image = np.asarray(example["image"])
    image = image if image.ndim == 3 else image[..., None]
    label = example.get("label")
    return image, None if label is None else int(label)


class _TFRecordSource:
  """A TFRecord file of the original FFHQ / CelebAHQ ``tf.train.Example`` records, indexed once by offset."""

  def __init__(self, path: pathlib.Path):
    self.path = path
    self.offsets, self.lengths = _index_tfrecord(path)

  def __len__(self) -> int:
    return len(self.offsets)

  def read(self, index: int) -> tuple[np.ndarray, int | None]:
    from tensorflow_datasets.proto import tf_example_pb2  # protobuf only; no TensorFlow

    with open(self.path, "rb") as f:
      f.seek(self.offsets[index])
      record = f.read(self.lengths[index])
    feature = tf_example_pb2.Example.FromString(record).features.feature
    shape = tuple(feature["shape"].int64_list.value)  # [C, H, W]
    data = np.frombuffer(feature["data"].bytes_list.value[0], np.uint8).reshape(shape)
    return data.transpose(1, 2, 0), None


def _index_tfrecord(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Offsets and lengths of the records (framing: uint64 length, uint32 CRC, data, uint32 CRC)."""
  offsets, lengths = [], []
  size = path.stat().st_size
  with open(path, "rb") as f:
    pos = 0
    while pos < size:
      header = f.read(12)
      if len(header) != 12:
        raise ValueError(f"Truncated TFRecord header at byte {pos} of {path}.")
      (length,) = struct.unpack("<Q", header[:8])
      offsets.append(pos + 12)
      lengths.append(length)
      pos += 12 + length + 4
      f.seek(pos)
    if pos != size:
      raise ValueError(f"Truncated TFRecord {path}: the last record ends at byte {pos}, the file has {size}.")
  return np.asarray(offsets, np.int64), np.asarray(lengths, np.int64)


# --- Opening the sources (every check that can fail runs before any long work) -----------------------------------

_HOW_TO_PROVIDE = (
    "This loader never downloads. Either prepare the tfds dataset on a machine with internet, "
    "`tfds build {name} --data_dir DIR --file_format array_record`, copy DIR here and set data.data_dir=DIR "
    "(or $TFDS_DATA_DIR); or train from files: data.dataset='folder' data.root=<folder or .tar.gz of class "
    "subfolders>, or data.dataset='npz' data.root=<.npz with 'images' [N, H, W, C] uint8>."
)


def tfds_data_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
  """Where tfds datasets are looked for: ``data.data_dir``, else ``$TFDS_DATA_DIR``, else ``~/tensorflow_datasets``."""
  data_dir = config.data.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
  return pathlib.Path(data_dir).expanduser()


def _version_key(path: pathlib.Path) -> tuple[int, ...]:
  return tuple(int(v) for v in path.name.split("."))


def _find_tfds_version_dir(data_dir: pathlib.Path, name: str) -> pathlib.Path:
  """The newest prepared version folder of ``name`` under ``data_dir``, found on disk only."""
  dataset_dir = data_dir / name
  versions = []
  if dataset_dir.is_dir():
    versions = [p for p in dataset_dir.iterdir()
                if re.fullmatch(r"\d+\.\d+\.\d+", p.name) and (p / "dataset_info.json").is_file()]
  if not versions:
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not prepared under data_dir {str(data_dir)!r} (looked for "
        f"{str(dataset_dir)!r}/<version>/dataset_info.json). " + _HOW_TO_PROVIDE.format(name=name))
  version_dir = max(versions, key=_version_key)
  if not any(".array_record" in p.name for p in version_dir.iterdir()):
    raise FileNotFoundError(
        f"tfds dataset {name!r} in {str(version_dir)!r} has no ArrayRecord shards (it was probably built as "
        f"TFRecord, which needs TensorFlow to read). Convert it once on a machine with TensorFlow: "
        f"`tfds convert_format --dataset_version_dir={version_dir} --out_file_format=array_record`, or rebuild "
        f"it with `tfds build {name} --file_format array_record`.")
  return version_dir


def _open_tfds(config: ml_collections.ConfigDict, spec: _TfdsSpec, split: str):
  if "{category}" in spec.name:
    category = config.data.get("category")
    if not category:
      raise ValueError(f"data.dataset={config.data.dataset!r} needs data.category (e.g. 'church_outdoor', "
                       f"'bedroom'); got {category!r}.")
    name = spec.name.format(category=category)
  else:
    name = spec.name
  version_dir = _find_tfds_version_dir(tfds_data_dir(config), name)
  import tensorflow_datasets as tfds  # imported here: ~0.5 s, and only the tfds sources need it

  builder = tfds.builder_from_directory(str(version_dir))
  tfds_split = spec.train_split if split == "train" else spec.eval_split
  if tfds_split not in builder.info.splits:
    raise ValueError(f"tfds dataset {name!r} in {str(version_dir)!r} has no split {tfds_split!r}; it has "
                     f"{sorted(builder.info.splits)}.")
  return _TfdsSource(builder.as_data_source(tfds_split), int(config.data.num_channels))


def _require_root(config: ml_collections.ConfigDict, what: str) -> pathlib.Path:
  root = config.data.get("root")
  if not root:
    raise ValueError(f"data.dataset={config.data.dataset!r} needs data.root ({what}); got {root!r}.")
  root = pathlib.Path(root).expanduser()
  if not root.exists():
    raise FileNotFoundError(f"data.root {str(root)!r} does not exist (data.dataset={config.data.dataset!r} reads "
                            f"{what} there). Copy the data to that path or set data.root to where it is.")
  return root


def _open_npz(config: ml_collections.ConfigDict) -> _ArraySource:
  root = _require_root(config, "an .npz with 'images' [N, H, W, C] uint8 and optional 'labels' [N]")
  try:
    with np.load(root) as f:
      names = sorted(f.keys())
      images = f["images"] if "images" in names else None
      labels = f["labels"] if "labels" in names else None
  except Exception as e:  # zipfile, zlib and numpy raise several types for a truncated or damaged file
    raise ValueError(f"data.root {str(root)!r} is not a readable .npz (truncated or damaged?): "
                     f"{type(e).__name__}: {e}") from None
  if images is None:
    raise ValueError(f"{str(root)!r} has no 'images' array; it has {names}.")
  if images.ndim != 4 or images.dtype != np.uint8:
    raise ValueError(f"'images' in {str(root)!r} must be [N, H, W, C] uint8; got shape {images.shape} "
                     f"dtype {images.dtype}.")
  if labels is not None and labels.shape != images.shape[:1]:
    raise ValueError(f"'labels' in {str(root)!r} must have shape {images.shape[:1]}; got {labels.shape}.")
  return _ArraySource(images, labels)


def _is_image(name: str) -> bool:
  return name.lower().endswith(_IMAGE_SUFFIXES)


@functools.lru_cache(maxsize=2)
def _read_tar(path: pathlib.Path, mtime: float) -> dict[str, bytes]:
  """All image members of an archive, by path (one sequential pass; ``mtime`` invalidates the cache)."""
  del mtime
  members = {}
  with tarfile.open(path) as tar:
    for member in tar:
      if member.isfile() and _is_image(member.name):
        members[member.name.removeprefix("./")] = tar.extractfile(member).read()
  return members


def _select_split(paths: Sequence[str], split: str, root: pathlib.Path) -> tuple[list[str], str]:
  """The image paths of ``split`` (under ``train/`` / ``test/`` when present) and the prefix they share."""
  parts = [p.split("/") for p in paths]
  tops = {p[0] for p in parts if len(p) > 1}
  prefix = ""
  # An archive of one folder (`tar czf x.tar.gz data/`): look inside it.
  if len(tops) == 1 and not tops & set(_SPLIT_DIRS.values()) and all(len(p) > 1 for p in parts):
    prefix = tops.pop() + "/"
    tops = {p[1] for p in parts if len(p) > 2}
  if tops & set(_SPLIT_DIRS.values()):
    sub = _SPLIT_DIRS[split]
    if sub not in tops:
      raise FileNotFoundError(f"data.root {str(root)!r} has {sorted(tops & set(_SPLIT_DIRS.values()))} but no "
                              f"{sub}/ subfolder for split {split!r}.")
    prefix += sub + "/"
  selected = sorted(p for p in paths if p.startswith(prefix))
  return selected, prefix


def _open_folder(config: ml_collections.ConfigDict, split: str) -> _EncodedSource:
  root = _require_root(config, "a folder, or a .tar.gz of one, of class subfolders of images")
  if root.is_dir():
    paths = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and _is_image(p.name)]
    load_fn = lambda key: (root / key).read_bytes()
  else:
    try:
      members = _read_tar(root, root.stat().st_mtime)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:  # a truncated .tar.gz ends in EOFError
      raise ValueError(f"data.root {str(root)!r} is neither a folder nor a readable tar archive (truncated or "
                       f"damaged?): {type(e).__name__}: {e}") from None
    paths = list(members)
    load_fn = members.__getitem__
  selected, prefix = _select_split(paths, split, root)
  if not selected:
    raise FileNotFoundError(f"No images ({', '.join(_IMAGE_SUFFIXES)}) under {str(root)!r}/{prefix} for split "
                            f"{split!r}.")
  classes = [os.path.dirname(p[len(prefix):]) for p in selected]
  class_names = sorted(set(classes))
  label_of = {name: i for i, name in enumerate(class_names)}
  labels = np.asarray([label_of[c] for c in classes], np.int32)
  stamp = root.stat().st_mtime_ns if root.is_file() else tuple((p, (root / p).stat().st_mtime_ns) for p in selected)
  image_files.check_files(selected, load_fn, num_channels=int(config.data.num_channels),
                          image_size=int(config.data.image_size), where=repr(str(root)),
                          cache_key=(str(root), prefix, stamp, int(config.data.num_channels),
                                     int(config.data.image_size)))
  return _EncodedSource(selected, labels, load_fn, int(config.data.num_channels), str(root))


def _open_tfrecords(config: ml_collections.ConfigDict) -> _TFRecordSource:
  path = config.data.get("root") or config.data.get("tfrecords_path")
  if not path:
    raise ValueError(f"data.dataset={config.data.dataset!r} needs data.tfrecords_path (or data.root): the "
                     f"original's TFRecord file.")
  path = pathlib.Path(path).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f"TFRecord file {str(path)!r} (data.tfrecords_path / data.root) not found. Copy the "
                            f"original's tfrecords there, or use data.dataset='folder' data.root=<images>.")
  return _TFRecordSource(path)


# --- The dataset -------------------------------------------------------------------------------------------------


class Dataset:
  """Deterministic, resumable batches of one split, for one host.

  Attributes:
    num_examples: examples in the split.
    global_batch_size: examples per step over all hosts; ``host_batch_size`` of them are this host's.
    num_eval_batches: batches of one evaluation pass, ``ceil(num_examples / global_batch_size)``.
  """

  def __init__(self, source, *, preprocess_fn: Callable[[np.ndarray, int], np.ndarray], image_size: int,
               num_channels: int, global_batch_size: int, seed: int, random_flip: bool,
               uniform_dequantization: bool, centered: bool, process_index: int, process_count: int,
               num_threads: int):
    self._source = source
    self._preprocess_fn = preprocess_fn
    self.image_shape = (image_size, image_size, num_channels)
    self.num_examples = len(source)
    self.global_batch_size = global_batch_size
    self.host_batch_size = global_batch_size // process_count
    self.process_index, self.process_count = process_index, process_count
    self.seed = seed
    self.random_flip, self.uniform_dequantization, self.centered = random_flip, uniform_dequantization, centered
    self.num_eval_batches = math.ceil(self.num_examples / global_batch_size)
    self._num_threads = num_threads
    self._pool: concurrent.futures.ThreadPoolExecutor | None = None
    self._permutations: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()  # the prefetch thread and the caller may both ask for permutations
    _, label = self._load(0)  # fail now on a wrong image size, not at the first step
    self.has_labels = label is not None

  def __len__(self) -> int:
    return self.num_examples

  @property
  def labels(self) -> np.ndarray | None:
    """Every label of the split (int [num_examples]) where the source holds them in memory ('npz' and 'folder'
    data); None for sources read example by example (tfds, TFRecords) or without labels."""
    labels = getattr(self._source, "labels", None) if self.has_labels else None
    return None if labels is None else np.asarray(labels)

  def _load(self, index: int) -> tuple[np.ndarray, int | None]:
    image, label = self._source.read(int(index))
    image = self._preprocess_fn(np.asarray(image, np.uint8), self.image_shape[0])
    if image.shape != self.image_shape:
      raise ValueError(f"Example {index} has shape {image.shape} after preprocessing; expected {self.image_shape} "
                       f"(data.image_size, data.image_size, data.num_channels).")
    return image, label

  def _load_many(self, indices: np.ndarray) -> list[tuple[np.ndarray, int | None]]:
    if self._num_threads <= 1 or len(indices) <= 1:
      return [self._load(i) for i in indices]
    if self._pool is None:  # PIL decodes and resizes without the GIL
      self._pool = concurrent.futures.ThreadPoolExecutor(self._num_threads)
    return list(self._pool.map(self._load, indices))

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._permutations:
        if len(self._permutations) >= 2:  # a batch spans at most two epochs when B <= N
          self._permutations.pop(min(self._permutations))
        rng = np.random.default_rng([self.seed, _ORDER_STREAM, epoch])
        self._permutations[epoch] = rng.permutation(self.num_examples)
      return self._permutations[epoch]

  def _finish(self, image: np.ndarray, entropy: list[int], flip: bool) -> np.ndarray:
    """uint8 [H, W, C] -> float32 [H, W, C]: to [0, 1], flip, dequantize, scale."""
    if flip or self.uniform_dequantization:
      rng = np.random.default_rng(entropy)
      if flip and rng.random() < 0.5:
        image = image[:, ::-1]
      if self.uniform_dequantization:  # the one dequantizer, clipped to each value's bin
        u = rng.random(image.shape, dtype=np.float32)
        return likelihood.dequantize_uniform(image, u, n_bits=_BITS, centered=self.centered)
    return scale(image.astype(np.float32) / _MAX_LEVEL, self.centered)

  def _host_positions(self, step: int) -> np.ndarray:
    start = step * self.global_batch_size + self.process_index * self.host_batch_size
    return np.arange(start, start + self.host_batch_size, dtype=np.int64)

  def _assemble(self, examples, entropies, flip: bool) -> dict[str, np.ndarray]:
    batch = {"image": np.stack([self._finish(im, e, flip) for (im, _), e in zip(examples, entropies)])}
    if self.has_labels:
      batch["label"] = np.asarray([label for _, label in examples], np.int32)
    return batch

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This host's part of training batch ``step``: a pure function of ``(seed, step)``.

    Returns:
      ``image`` float32 [host_batch_size, H, W, C] (scaled) and, when the data has labels, ``label`` int32
      [host_batch_size].
    """
    if step < 0:
      raise ValueError(f"step must be >= 0; got {step}.")
    items = self._host_positions(step)  # positions in the endless stream of epochs
    epochs, positions = np.divmod(items, self.num_examples)
    indices = np.empty_like(items)
    for epoch in np.unique(epochs):
      at = epochs == epoch
      indices[at] = self._permutation(int(epoch))[positions[at]]
    examples = self._load_many(indices)
    entropies = [[self.seed, _AUGMENT_STREAM, int(i)] for i in items]
    return self._assemble(examples, entropies, flip=self.random_flip)

  def iterate(self, start_step: int = 0, prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """Training batches ``start_step, start_step + 1, ...`` (endless); resuming at ``k`` continues the same run.

    Args:
      start_step: the first step (the step a restored checkpoint stopped at).
      prefetch: batches a background thread prepares ahead while the device trains (0: none).
    """
    if prefetch <= 0:
      yield from map(self.batch, itertools.count(start_step))
      return
    ready: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce():
      for step in itertools.count(start_step):
        try:
          item = self.batch(step)
        except BaseException as e:  # handed to the consumer, which re-raises it
          item = e
        while not stop.is_set():
          try:
            ready.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set() or isinstance(item, BaseException):
          return

    threading.Thread(target=produce, daemon=True, name="score_jax-datasets-prefetch").start()
    try:
      while True:
        item = ready.get()
        if isinstance(item, BaseException):
          raise item
        yield item
    finally:  # the consumer stopped (break, close, garbage collection): let the thread end
      stop.set()

  def eval_batch(self, index: int) -> dict[str, np.ndarray]:
    """This host's part of batch ``index`` of the ordered evaluation pass (no flips).

    Returns:
      ``image`` float32 [host_batch_size, H, W, C], ``mask`` bool [host_batch_size] (False on the zero padding
      of the last batch) and, when the data has labels, ``label`` int32 [host_batch_size] (0 on padding).
    """
    if not 0 <= index < self.num_eval_batches:
      raise ValueError(f"eval batch index must be in [0, {self.num_eval_batches}); got {index}.")
    positions = self._host_positions(index)
    mask = positions < self.num_examples
    real = self._load_many(positions[mask])
    padding = [(np.zeros(self.image_shape, np.uint8), 0 if self.has_labels else None)] * int((~mask).sum())
    entropies = [[self.seed, _EVAL_STREAM, int(i)] for i in positions]
    batch = self._assemble(real + padding, entropies, flip=False)
    batch["mask"] = mask
    return batch

  def iterate_eval(self) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over every example exactly once; the same number of batches on every host."""
    for index in range(self.num_eval_batches):
      yield self.eval_batch(index)


def get_dataset(config: ml_collections.ConfigDict, split: str, *, seed: int | None = None,
                batch_size: int | None = None, uniform_dequantization: bool | None = None,
                process_index: int | None = None, process_count: int | None = None,
                num_threads: int = 8) -> Dataset:
  """The ``split`` of ``config.data.dataset`` as a :class:`Dataset` for this host.

  Args:
    config: reads ``data.{dataset, image_size, num_channels, random_flip, centered, uniform_dequantization}`` and,
      when set, ``data.{root, data_dir, category, tfrecords_path}``; ``training.batch_size`` (train) or
      ``eval.batch_size`` (eval) unless ``batch_size`` is given; ``seed`` unless given.
    split: ``"train"``, or ``"eval"`` (aliases ``"test"``, ``"validation"``: the dataset's evaluation split, as
      the original: CIFAR-10 / SVHN ``test``, CelebA / LSUN ``validation``).
    seed: non-negative int fixing the order and the augmentation; default ``config.seed``.
    batch_size: global batch size over all hosts.
    uniform_dequantization: default ``data.uniform_dequantization`` (likelihood evaluation turns it on).
    process_index, process_count: this host and the number of hosts (default ``jax.process_index()`` /
      ``jax.process_count()``).
    num_threads: decoding threads (1: decode in the calling thread).

  Raises:
    ValueError: unknown dataset or split, batch size not divisible by ``process_count``, images that do not come
      out ``[image_size, image_size, num_channels]``, missing config fields.
    FileNotFoundError: data not on disk; the message says where it looked and how to provide it.
  """
  data = config.data
  name = data.dataset
  if name not in DATASETS:
    raise ValueError(f"Unknown data.dataset {name!r}; expected one of {sorted(DATASETS)}.")
  if split not in _SPLIT_ALIASES:
    raise ValueError(f"Unknown split {split!r}; expected one of {sorted(_SPLIT_ALIASES)}.")
  split = _SPLIT_ALIASES[split]
  seed = config.get("seed", 0) if seed is None else seed
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int; got {seed!r}.")
  if batch_size is None:
    batch_size = config.training.batch_size if split == "train" else config.eval.batch_size
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"process_index must be in [0, process_count); got {process_index} of {process_count}.")
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"Batch size {batch_size} must be a positive multiple of the process count {process_count}.")
  num_channels = int(data.num_channels)
  if num_channels not in (1, 3):
    raise ValueError(f"data.num_channels must be 1 or 3; got {num_channels}.")

  spec = DATASETS[name]
  preprocess_fn = _identity_op
  if isinstance(spec, _TfdsSpec):
    source, preprocess_fn = _open_tfds(config, spec, split), spec.preprocess_fn
  elif spec == "tfrecords":
    source = _open_tfrecords(config)
  elif spec == "folder":
    source = _open_folder(config, split)
  else:
    source = _open_npz(config)
  if len(source) == 0:
    raise ValueError(f"data.dataset={name!r} split {split!r} has no examples.")
  if uniform_dequantization is None:
    uniform_dequantization = bool(data.uniform_dequantization)
  return Dataset(source, preprocess_fn=preprocess_fn, image_size=int(data.image_size), num_channels=num_channels,
                 global_batch_size=int(batch_size), seed=int(seed),
                 random_flip=bool(data.random_flip) and split == "train",
                 uniform_dequantization=uniform_dequantization, centered=bool(data.centered),
                 process_index=int(process_index), process_count=int(process_count), num_threads=num_threads)
