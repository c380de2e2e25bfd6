"""Image files checked up front: every file of a folder or archive decoded once when the dataset is opened.

A damaged, non-image or wrong-size file found only when first drawn costs the compile and the steps before it,
and is reported by index; here every file is decoded (PIL, in a thread pool: it decodes without the GIL) before
any compile, the errors name the files, and the channel count of the images is checked against
``data.num_channels`` (all-grayscale images under ``num_channels=3`` would train silently as RGB). A folder or
archive that passed is not checked again in the same process (evaluation opens its splits several times).
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import time
from collections.abc import Callable, Hashable, Sequence

import numpy as np
from PIL import Image

__all__ = ["decode", "check_files", "MAX_LISTED"]

log = logging.getLogger(__name__)

MAX_LISTED = 5  # bad files named in one error
_CHECKED: set = set()  # cache keys of the file sets that passed
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes of single-channel images


def decode(data: bytes, num_channels: int, where: str) -> np.ndarray:
  """uint8 ``[H, W, num_channels]`` of an encoded image (converted to RGB or L); ValueError naming ``where``."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      image = np.asarray(im.convert("RGB" if num_channels == 3 else "L"))
  except Exception as e:  # PIL raises several types for corrupt files
    raise ValueError(f"Cannot decode image {where}: {e}") from e
  return image if image.ndim == 3 else image[..., None]


def _inspect(data: bytes) -> tuple[tuple[int, int] | None, bool, str | None]:
  """(width, height), whether single-channel, and the decoding error (None: decoded)."""
  try:
    with Image.open(io.BytesIO(data)) as im:
      im.load()  # the whole image: a truncated file fails here, not only its header
      return im.size, im.mode in _GRAY_MODES, None
  except Exception as e:  # PIL raises several types for corrupt files
    return None, False, f"{type(e).__name__}: {e}"


def check_files(keys: Sequence[str], load_fn: Callable[[str], bytes], *, num_channels: int, image_size: int | None,
                where: str, cache_key: Hashable | None = None, num_threads: int = 8) -> None:
  """Decode every file once and check its size and the channel count.

  Args:
    keys: the files (paths relative to ``where``); ``load_fn(key)`` gives a file's bytes.
    num_channels: ``data.num_channels``; all files single-channel under 3, or all colour under 1, is an error.
    image_size: the height and width every file must have (None: any, the preprocessing resizes).
    where: the folder or archive, for the messages.
    cache_key: identifies this set of files (e.g. the archive's path and mtime): checked once per process.

  Raises:
    ValueError: naming the first files that do not decode or have another size, with the remedy; or the
      channel mismatch.
  """
  if cache_key is not None and cache_key in _CHECKED:
    return
  t0 = time.time()

  def one(key: str):
    try:
      data = load_fn(key)
    except OSError as e:
      return key, (None, False, f"unreadable: {e}")
    return key, _inspect(data)

  bad, gray = [], 0
  with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
    for key, (size, is_gray, error) in pool.map(one, keys, chunksize=64):
      if error is not None:
        bad.append(f"{key!r} ({error})")
      elif image_size is not None and size != (image_size, image_size):
        bad.append(f"{key!r} ({size[0]}x{size[1]}, expected {image_size}x{image_size} = data.image_size)")
      gray += is_gray
  if bad:
    more = f" (+{len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
    raise ValueError(f"{len(bad)} of the {len(keys)} image files in {where} cannot be used: "
                     f"{', '.join(bad[:MAX_LISTED])}{more}. Remove or replace them (or fix data.image_size).")
  if num_channels == 3 and gray == len(keys):
    raise ValueError(f"all {len(keys)} images in {where} are single-channel (grayscale) but data.num_channels=3: "
                     "they would train as RGB copies. Set data.num_channels=1.")
  if num_channels == 1 and gray == 0:
    raise ValueError(f"all {len(keys)} images in {where} are colour but data.num_channels=1: their colour would be "
                     "dropped. Set data.num_channels=3, or convert them to grayscale first.")
  log.info("checked %d image files in %s in %.1f s", len(keys), where, time.time() - t0)
  if cache_key is not None:
    _CHECKED.add(cache_key)
