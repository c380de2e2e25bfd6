"""Atomic file writes: each file is written under a temporary name beside its target, then renamed.

A reader (or a run killed half-way) therefore sees either the old file or the whole new one, never a part.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from typing import Any

import numpy as np

__all__ = ["write_bytes", "write_json", "savez", "savefig", "save_png", "image_grid", "sha256_file"]


def sha256_file(path: str | os.PathLike) -> str:
  """The sha256 (hex) of the file at ``path``, read in 4 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()


def _tmp(path: str, suffix: str = "") -> str:
  return f"{path}.tmp-{os.getpid()}{suffix}"


def write_bytes(path: str, data: bytes) -> None:
  """Write ``data`` to ``path`` atomically."""
  tmp = _tmp(path)
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  """``obj`` as indented JSON at ``path``, atomically."""
  write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def savez(path: str, **arrays) -> None:
  """``np.savez`` to ``path``, atomically."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  write_bytes(path, buffer.getvalue())


def savefig(fig, path: str, dpi: int = 110) -> None:
  """A matplotlib figure as PNG at ``path``, atomically."""
  tmp = _tmp(path, ".png")
  fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
  os.replace(tmp, path)


def image_grid(images: np.ndarray, ncol: int | None = None, padding: int = 2) -> np.ndarray:
  """Tile ``images`` uint8 ``[N, H, W, C]`` into one uint8 ``[rows * (H + p) + p, ncol * (W + p) + p, C]`` image.

  ``ncol`` defaults to ``ceil(sqrt(N))``; empty cells and the ``padding`` lines are black.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.dtype != np.uint8 or images.shape[0] < 1:
    raise ValueError(f"images must be uint8 [N, H, W, C] with N >= 1; got {images.dtype} {images.shape}.")
  n, h, w, c = images.shape
  ncol = int(np.ceil(np.sqrt(n))) if ncol is None else min(int(ncol), n)
  nrow = -(-n // ncol)
  grid = np.zeros((nrow * (h + padding) + padding, ncol * (w + padding) + padding, c), np.uint8)
  for i, image in enumerate(images):
    r, q = divmod(i, ncol)
    y, x = padding + r * (h + padding), padding + q * (w + padding)
    grid[y:y + h, x:x + w] = image
  return grid


def save_png(path: str, image: np.ndarray) -> None:
  """A uint8 ``[H, W, C]`` image (C = 1 or 3) as PNG at ``path``, atomically."""
  from PIL import Image

  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] not in (1, 3) or image.dtype != np.uint8:
    raise ValueError(f"save_png needs uint8 [H, W, 1 or 3]; got {image.dtype} {image.shape}.")
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  write_bytes(path, buffer.getvalue())
