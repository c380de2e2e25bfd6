"""score_jax.datasets on tiny generated data: every source, preprocessing, order, sharding, errors.

The tfds path is tested on a CIFAR-10 look-alike (a few 8x8 images) that a local builder writes as ArrayRecord
into tmp_path and `get_dataset` then reads as data.dataset='CIFAR10': the real reading path
(`builder_from_directory` + `as_data_source`), not a mock. `tfds.testing.mock_data` is not used: it replaces
`as_data_source` but leaves no prepared folder on disk, which `get_dataset` checks for first so that it never
downloads. Not tested: real tfds CIFAR-10 / SVHN / CelebA / LSUN files (not on this machine; their features are
read with the same `as_data_source` call) and TFRecord CRCs (the reader does not check them).
"""

import io
import itertools
import pathlib
import tarfile
import time

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import SHARED
from PIL import Image

from score_jax import datasets

CIFAR_TAR = SHARED / "data" / "cifar10-jpeg.tar.gz"
TINY = 8  # side of the generated images


def make_config(dataset="npz", root=None, image_size=TINY, batch_size=4, eval_batch_size=3, **data):
  """The original's config layout; data.root / data_dir only when given (existing configs lack them)."""
  config = ml_collections.ConfigDict()
  config.seed = 7
  config.training = ml_collections.ConfigDict({"batch_size": batch_size})
  config.eval = ml_collections.ConfigDict({"batch_size": eval_batch_size})
  config.data = ml_collections.ConfigDict({
      "dataset": dataset, "image_size": image_size, "random_flip": True, "centered": False,
      "uniform_dequantization": False, "num_channels": 3})
  if root is not None:
    config.data.root = str(root)
  config.data.update(data)
  return config


def random_images(n, size=TINY, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def npz_path(tmp_path):
  path = tmp_path / "tiny.npz"
  np.savez(path, images=random_images(10), labels=np.arange(10) % 3)
  return path


def png_bytes(image):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def write_folder(root, splits=("train", "test"), per_class=3):
  """root/<split>/<class>/<i>.png with lossless random images; returns {split: {relative path: image}}."""
  written = {}
  for s, split in enumerate(splits):
    written[split] = {}
    for c, cls in enumerate(("cat", "dog")):
      (root / split / cls).mkdir(parents=True)
      for i, image in enumerate(random_images(per_class, seed=10 * s + c)):
        (root / split / cls / f"{i}.png").write_bytes(png_bytes(image))
        written[split][f"{cls}/{i}.png"] = image
  return written


# --- Scalers and preprocessing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("centered", [False, True])
def test_scaler_round_trip(centered, rng):
  config = make_config(centered=centered)
  x = rng.random((2, 4, 4, 3), dtype=np.float32)
  scaled = datasets.get_data_scaler(config)(x)
  lo, hi = (-1.0, 1.0) if centered else (0.0, 1.0)
  assert scaled.dtype == np.float32 and lo <= scaled.min() and scaled.max() <= hi
  np.testing.assert_allclose(datasets.get_data_inverse_scaler(config)(scaled), x, atol=1e-6)
  np.testing.assert_allclose(datasets.get_data_inverse_scaler(config)(jnp.asarray(scaled)), x, atol=1e-6)


def test_preprocess_ops_shapes():
  celeba = np.zeros((218, 178, 3), np.uint8)  # CelebA's aligned size
  assert datasets._celeba_op(celeba, 64).shape == (64, 64, 3)
  lsun = np.zeros((256, 341, 3), np.uint8)
  assert datasets._lsun_op(lsun, 128).shape == (128, 128, 3)
  assert datasets._lsun_op(lsun, 256).shape == (256, 256, 3)
  image = random_images(1, 32)[0]
  assert datasets._resize_op(image, 32) is image  # CIFAR-10 at its own size is untouched
  # A constant image stays constant through the antialiased resize.
  np.testing.assert_array_equal(datasets._lsun_op(np.full((40, 60, 3), 77, np.uint8), 16), 77)


def test_flip_and_dequantization(npz_path):
  config = make_config(root=npz_path, uniform_dequantization=True, batch_size=10)
  ds = datasets.get_dataset(config, "train", process_count=1, process_index=0)
  originals = np.load(npz_path)["images"]
  order = np.random.default_rng([config.seed, 0, 0]).permutation(10)
  batch = ds.batch(0)
  levels = np.floor(batch["image"] * 256).astype(np.uint8)  # (255 x + u) / 256 with u in [0, 1) keeps the level
  flipped = [np.array_equal(levels[j], originals[i][:, ::-1]) for j, i in enumerate(order)]
  kept = [np.array_equal(levels[j], originals[i]) for j, i in enumerate(order)]
  assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
  np.testing.assert_array_equal(batch["label"], order % 3)
  # Evaluation: no flips.
  eval_ds = datasets.get_dataset(config, "eval", process_count=1, process_index=0)
  levels = np.floor(eval_ds.eval_batch(0)["image"] * 256).astype(np.uint8)
  np.testing.assert_array_equal(levels, originals[:3])


# --- Order: deterministic, resumable, sharded, complete --------------------------------------------------------


def test_batch_is_a_function_of_seed_and_step(npz_path):
  config = make_config(root=npz_path, uniform_dequantization=True)
  a = datasets.get_dataset(config, "train", process_count=1, process_index=0)
  b = datasets.get_dataset(config, "train", process_count=1, process_index=0, num_threads=1)
  for step in (5, 0, 3):  # any order of requests
    np.testing.assert_array_equal(a.batch(step)["image"], b.batch(step)["image"])
  other = datasets.get_dataset(config, "train", seed=8, process_count=1, process_index=0)
  assert not np.array_equal(a.batch(0)["image"], other.batch(0)["image"])


def test_resume_equals_tail(npz_path):
  ds = datasets.get_dataset(make_config(root=npz_path), "train", process_count=1, process_index=0)
  full = list(itertools.islice(ds.iterate(0, prefetch=0), 6))
  tail = list(itertools.islice(ds.iterate(4), 2))  # with the prefetch thread
  for x, y in zip(full[4:], tail):
    np.testing.assert_array_equal(x["image"], y["image"])
    np.testing.assert_array_equal(x["label"], y["label"])


def test_every_example_once_per_epoch(npz_path):
  """10 examples, batch 4: batches straddle epochs, and each epoch is a permutation (nothing dropped)."""
  config = make_config(root=npz_path, random_flip=False)
  ds = datasets.get_dataset(config, "train", process_count=1, process_index=0)
  images = np.load(npz_path)["images"].reshape(10, -1)
  seen = np.concatenate([ds.batch(s)["image"] for s in range(5)]).reshape(20, -1) * 255
  ids = [int(np.argmin(np.abs(images - row).sum(1))) for row in np.round(seen)]
  assert sorted(ids[:10]) == list(range(10)) and sorted(ids[10:]) == list(range(10))
  assert ids[:10] != ids[10:]  # each epoch has its own order


def test_hosts_partition_the_global_batch(npz_path):
  config = make_config(root=npz_path, batch_size=6, uniform_dequantization=True)
  whole = datasets.get_dataset(config, "train", process_count=1, process_index=0)
  for step in (0, 1):
    parts = [datasets.get_dataset(config, "train", process_index=p, process_count=3).batch(step) for p in range(3)]
    assert all(part["image"].shape == (2, TINY, TINY, 3) for part in parts)
    np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), whole.batch(step)["image"])


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once(npz_path, process_count):
  config = make_config(root=npz_path, eval_batch_size=4)
  originals = np.load(npz_path)["images"]
  images, masks = [], []
  for p in range(process_count):
    ds = datasets.get_dataset(config, "eval", process_index=p, process_count=process_count)
    assert ds.num_eval_batches == 3  # ceil(10 / 4): the last batch is kept, padded
    host = list(ds.iterate_eval())
    images.append(np.stack([b["image"] for b in host]))  # [batches, B_host, H, W, C]
    masks.append(np.stack([b["mask"] for b in host]))
  # Global batch b = host 0's slice, then host 1's, ...
  images = np.concatenate(images, axis=1).reshape(12, TINY, TINY, 3)
  masks = np.concatenate(masks, axis=1).reshape(12)
  assert masks.sum() == 10 and masks[:10].all()
  np.testing.assert_array_equal(np.round(images[masks] * 255).astype(np.uint8), originals)
  assert (images[~masks] == 0).all()


# --- Sources ---------------------------------------------------------------------------------------------------


def check_folder_dataset(config, written):
  train = datasets.get_dataset(config, "train", process_count=1, process_index=0)
  test = datasets.get_dataset(config, "test", process_count=1, process_index=0)
  assert (train.num_examples, test.num_examples) == (6, 6)
  batches = list(test.iterate_eval())
  labels = np.concatenate([b["label"] for b in batches])[np.concatenate([b["mask"] for b in batches])]
  np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])  # sorted class folders: cat, dog
  got = np.round(np.concatenate([b["image"] for b in batches])[:6] * 255).astype(np.uint8)
  np.testing.assert_array_equal(got, np.stack([written["test"][k] for k in sorted(written["test"])]))
  assert train.batch(0)["image"].shape == (4, TINY, TINY, 3)


def test_folder(tmp_path):
  written = write_folder(tmp_path / "images")
  check_folder_dataset(make_config("folder", tmp_path / "images"), written)


def test_folder_tar_gz(tmp_path):
  written = write_folder(tmp_path / "images")
  archive = tmp_path / "images.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(tmp_path / "images", arcname="images")  # one top-level folder, as `tar czf images.tar.gz images/`
  check_folder_dataset(make_config("folder", archive), written)


def test_folder_without_splits_and_jpeg(tmp_path):
  (tmp_path / "a").mkdir()
  for i, image in enumerate(random_images(3)):
    Image.fromarray(image).save(tmp_path / "a" / f"{i}.JPG", format="JPEG")
  config = make_config("folder", tmp_path)
  for split in ("train", "eval"):  # no train/ or test/: both splits read everything
    assert datasets.get_dataset(config, split, process_count=1, process_index=0).num_examples == 3


def test_real_cifar10_jpeg_members(tmp_path):
  """A few members of the shared archive (not unpacked): the layout and the JPEGs load as 32x32x3 CIFAR."""
  if not CIFAR_TAR.exists():
    pytest.skip(f"{CIFAR_TAR} not found (../shared is absent); set SCORE_JAX_SHARED to its path")
  with tarfile.open(CIFAR_TAR) as tar:  # streams: stops after the first few members
    members = [m for m in itertools.islice(tar, 40) if m.isfile()][:6]
    for m in members:
      assert m.name.split("/")[0] in ("train", "test") and m.name.endswith(".jpg"), m.name
      (tmp_path / m.name).parent.mkdir(parents=True, exist_ok=True)
      (tmp_path / m.name).write_bytes(tar.extractfile(m).read())
  config = make_config("CIFAR10", image_size=32, batch_size=2)
  config.data.dataset, config.data.root = "folder", str(tmp_path)
  ds = datasets.get_dataset(config, "train", process_count=1, process_index=0)
  assert ds.num_examples == len(members)
  image = ds.batch(0)["image"]
  assert image.shape == (2, 32, 32, 3) and 0 <= image.min() and image.max() <= 1


def test_npz_without_labels(tmp_path):
  np.savez(tmp_path / "x.npz", images=random_images(5))
  ds = datasets.get_dataset(make_config(root=tmp_path / "x.npz"), "train", process_count=1, process_index=0)
  assert ds.num_examples == 5 and set(ds.batch(0)) == {"image"}


def test_tfrecords_ffhq_layout(tmp_path):
  from tensorflow_datasets.proto import tf_example_pb2

  images = random_images(3)
  path = tmp_path / "ffhq-r03.tfrecords"
  with open(path, "wb") as f:
    for image in images:
      example = tf_example_pb2.Example()
      example.features.feature["shape"].int64_list.value.extend([3, TINY, TINY])
      example.features.feature["data"].bytes_list.value.append(image.transpose(2, 0, 1).tobytes())  # CHW
      record = example.SerializeToString()
      f.write(len(record).to_bytes(8, "little") + b"\0" * 4 + record + b"\0" * 4)  # CRCs are not checked
  config = make_config("FFHQ", eval_batch_size=3, tfrecords_path=str(path))
  ds = datasets.get_dataset(config, "eval", process_count=1, process_index=0)
  np.testing.assert_array_equal(np.round(ds.eval_batch(0)["image"] * 255).astype(np.uint8), images)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A CIFAR-10 look-alike (8x8, 7 train / 5 test) prepared by tfds as ArrayRecord, without TensorFlow."""
  import tensorflow_datasets as tfds

  class Cifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = "cifar10"
    VERSION = tfds.core.Version("3.0.2")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "id": tfds.features.Text(), "image": tfds.features.Image(shape=(TINY, TINY, 3)),
          "label": tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(7, 0), "test": self._generate_examples(5, 1)}

    def _generate_examples(self, n, seed):
      for i, image in enumerate(random_images(n, seed=seed)):  # PNG bytes: encoding arrays would need TF
        yield i, {"id": f"{seed}_{i}", "image": png_bytes(image), "label": i}

  data_dir = tmp_path_factory.mktemp("tfds")
  Cifar10(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir


def test_tfds_array_record(tfds_dir):
  config = make_config("CIFAR10", batch_size=4, eval_batch_size=2, data_dir=str(tfds_dir))
  train = datasets.get_dataset(config, "train", process_count=1, process_index=0)
  test = datasets.get_dataset(config, "eval", process_count=1, process_index=0)
  assert (train.num_examples, test.num_examples, test.num_eval_batches) == (7, 5, 3)
  batch = train.batch(0)
  assert batch["image"].shape == (4, TINY, TINY, 3) and batch["image"].dtype == np.float32
  labels = np.concatenate([b["label"][b["mask"]] for b in test.iterate_eval()])
  assert sorted(labels) == list(range(5))
  again = datasets.get_dataset(config, "train", process_count=1, process_index=0)
  np.testing.assert_array_equal(again.batch(3)["image"], train.batch(3)["image"])


# --- Errors ----------------------------------------------------------------------------------------------------


def test_missing_tfds_dataset_fails_fast(tmp_path):
  config = make_config("CIFAR10", image_size=32, data_dir=str(tmp_path / "nowhere"))
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError) as info:
    datasets.get_dataset(config, "train", process_count=1, process_index=0)
  assert time.perf_counter() - start < 2.0  # offline: no download attempt, no retries
  message = str(info.value)
  assert str(tmp_path / "nowhere") in message and "tfds build cifar10" in message and "data.root" in message


def test_tfrecord_built_tfds_dataset_says_convert(tmp_path):
  version_dir = tmp_path / "svhn_cropped" / "3.1.0"
  version_dir.mkdir(parents=True)
  (version_dir / "dataset_info.json").write_text("{}")
  (version_dir / "svhn_cropped-train.tfrecord-00000-of-00001").write_bytes(b"")
  config = make_config("SVHN", image_size=32, data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="convert_format"):
    datasets.get_dataset(config, "train", process_count=1, process_index=0)


@pytest.mark.parametrize("dataset", ["folder", "npz", "FFHQ"])
def test_missing_files_fail_fast(tmp_path, dataset):
  missing = tmp_path / "absent"
  config = make_config(dataset, missing)
  start = time.perf_counter()
  with pytest.raises(FileNotFoundError, match=str(missing)):
    datasets.get_dataset(config, "train", process_count=1, process_index=0)
  assert time.perf_counter() - start < 2.0


def test_bad_inputs(npz_path, tmp_path):
  def get(config, split="train", **kw):
    kw = {"process_count": 1, "process_index": 0, **kw}
    return datasets.get_dataset(config, split, **kw)

  with pytest.raises(ValueError, match="'MNIST'.*CIFAR10"):
    get(make_config("MNIST"))
  with pytest.raises(ValueError, match="Batch size 4 must be a positive multiple of the process count 3"):
    get(make_config(root=npz_path), process_count=3)
  with pytest.raises(ValueError, match=r"shape \(8, 8, 3\).*expected \(16, 16, 3\)"):
    get(make_config(root=npz_path, image_size=16))
  with pytest.raises(ValueError, match=r"shape \(8, 8, 3\).*expected \(8, 8, 1\)"):
    get(make_config(root=npz_path, num_channels=1))
  with pytest.raises(ValueError, match="'valid'"):
    get(make_config(root=npz_path), split="valid")
  with pytest.raises(ValueError, match="data.category"):
    get(make_config("LSUN", image_size=128, data_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="needs data.root"):
    get(make_config("npz"))
  with pytest.raises(ValueError, match="step must be >= 0; got -1"):
    get(make_config(root=npz_path)).batch(-1)
  np.savez(tmp_path / "float.npz", images=np.zeros((2, TINY, TINY, 3), np.float32))
  with pytest.raises(ValueError, match="uint8"):
    get(make_config(root=tmp_path / "float.npz"))
  with pytest.raises(ValueError, match="seed"):
    get(make_config(root=npz_path), seed=-1)


def test_existing_configs_need_no_new_fields():
  """The repository's CIFAR-10 defaults (data.root / data.data_dir empty) select the tfds path."""
  from score_jax import configs_loader

  config = configs_loader.load_config(pathlib.Path(__file__).parents[1] / "configs" / "default_cifar10_configs.py")
  assert config.data.root == "" and config.data.data_dir == "" and config.data.dataset in datasets.DATASETS
  assert datasets.tfds_data_dir(config).name  # resolves without the field


def test_prefetch_reraises_errors(npz_path):
  ds = datasets.get_dataset(make_config(root=npz_path), "train", process_count=1, process_index=0)
  batch = ds.batch

  def failing_batch(step):
    if step == 2:
      raise OSError("disk gone")
    return batch(step)

  ds.batch = failing_batch
  it = ds.iterate(0)
  next(it), next(it)
  with pytest.raises(OSError, match="disk gone"):
    next(it)
