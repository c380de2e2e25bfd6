"""Item 5 of issue 16: data checked when the dataset is opened, before any compile, errors naming the file."""

import io
import pathlib
import tarfile

import numpy as np
import pytest
from helpers import tiny_config
from PIL import Image
from reliability_common import digest, launcher

from score_jax import datasets


def _png(array: np.ndarray) -> bytes:
  out = io.BytesIO()
  Image.fromarray(array).save(out, format="PNG")
  return out.getvalue()


def _folder(root: pathlib.Path, n: int = 6, gray: bool = False) -> pathlib.Path:
  rng = np.random.default_rng(0)
  for i in range(n):
    shape = (8, 8) if gray else (8, 8, 3)
    path = root / ("cat" if i % 2 else "dog") / f"{i}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png(rng.integers(0, 256, shape, dtype=np.uint8)))
  return root


def _config(root, **overrides):
  return tiny_config(pathlib.Path(root), **{"data.dataset": "folder", **overrides})


def test_good_folder_opens(tmp_path):
  assert len(datasets.get_dataset(_config(_folder(tmp_path / "good")), "train", num_threads=1)) == 6


@pytest.mark.parametrize("fault", ["not_an_image", "truncated", "wrong_size"])
def test_a_bad_file_in_a_folder_is_named_when_the_dataset_is_opened(tmp_path, fault):
  root = _folder(tmp_path / fault)
  bad = root / "cat" / "3.png"
  if fault == "not_an_image":
    bad.write_bytes(b"this is not a PNG file at all" * 4)
  elif fault == "truncated":
    bad.write_bytes(bad.read_bytes()[:60])
  else:
    bad.write_bytes(_png(np.zeros((16, 8, 3), np.uint8)))
  expected = {"not_an_image": "UnidentifiedImageError", "truncated": "Error",
              "wrong_size": "8x16, expected 8x8 = data.image_size"}[fault]
  with pytest.raises(ValueError, match=r"1 of the 6 image files in .* cannot be used: 'cat/3.png' \(.*" + expected):
    datasets.get_dataset(_config(root), "train")


def test_grayscale_images_under_three_channels_are_refused(tmp_path):
  root = _folder(tmp_path / "gray", gray=True)
  with pytest.raises(ValueError, match="all 6 images in .* are single-channel .* Set data.num_channels=1"):
    datasets.get_dataset(_config(root), "train")
  assert datasets.get_dataset(_config(root, **{"data.num_channels": 1}), "train").image_shape == (8, 8, 1)


def test_truncated_archive_and_npz_are_named_in_one_line(tmp_path):
  folder = _folder(tmp_path / "src")
  archive = tmp_path / "data.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname="data")
  archive.write_bytes(archive.read_bytes()[:len(archive.read_bytes()) // 2])
  with pytest.raises(ValueError, match=r"data.root '.*data.tar.gz' is neither a folder nor a readable tar archive "
                     r"\(truncated or damaged\?\)") as e:
    datasets.get_dataset(_config(archive), "train")
  assert "\n" not in str(e.value)
  npz = tmp_path / "data.npz"
  np.savez(npz, images=np.zeros((64, 8, 8, 3), np.uint8))
  npz.write_bytes(npz.read_bytes()[:2000])
  with pytest.raises(ValueError, match=r"'.*data.npz' is not a readable .npz \(truncated or damaged\?\)") as e:
    datasets.get_dataset(tiny_config(npz), "train")
  assert "\n" not in str(e.value)


def test_launcher_refuses_a_corrupt_folder_before_any_compile(tmp_path):
  """For real, through the launcher: a corrupt file makes --mode train exit non-zero naming the file, with
  nothing written (the workdir is not even created)."""
  root = _folder(tmp_path / "data")
  (root / "dog" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
  workdir = tmp_path / "run"
  before = digest(root)
  out = launcher(root, workdir, overrides={"data.dataset": "folder"}, tmp_path=tmp_path, timeout=120)
  assert out.returncode != 0
  assert "cannot be used: 'dog/4.png'" in out.stderr, out.stderr[-2000:]
  assert not workdir.exists() and digest(root) == before
