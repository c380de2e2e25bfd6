"""FID reference statistics and sample-set metrics (score_jax.eval) with a cheap stand-in feature network.

The stand-in is a fixed random projection of the pixels; what is tested is the pipeline around the
network: every example counted exactly once (no dropped last batch), exact uint8 round trips, statistics
files in the common layout, metrics equal to those of score_jax.metrics on the same features, and
errors before work. The Inception network itself is tested in test_inception.py.
"""

import json

import numpy as np
import pytest
from helpers import fake_feature_fn

from score_jax import eval as sj_eval
from score_jax import features, fileio, metrics


@pytest.fixture
def npz_data(tmp_path):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (25, 8, 8, 3), dtype=np.uint8)
  path = tmp_path / "data.npz"
  np.savez(path, images=images)
  return path, images


def test_stats_cover_every_example_once(npz_data, tmp_path):
  path, images = npz_data
  config = features.data_config("npz", root=str(path), image_size=8)
  out = tmp_path / "stats.npz"
  result = sj_eval.compute_stats(config, "train", fake_feature_fn, str(out), batch_size=10, save_features=True,
                                 progress=False)
  assert result["num_examples"] == 25  # 10 + 10 + 5: the last, partial batch counts
  expected = fake_feature_fn(images.astype(np.float32) / 255.0)["pool3"]
  with np.load(out) as f:
    np.testing.assert_allclose(f["pool_3"], expected, rtol=1e-5)
    assert int(f["num_examples"]) == 25
  mu, sigma = metrics.load_stats(str(out))
  np.testing.assert_allclose(mu, expected.mean(0), rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(expected, rowvar=False), rtol=1e-10, atol=1e-12)
  with pytest.raises(FileExistsError, match="nothing was overwritten"):
    sj_eval.compute_stats(config, "train", fake_feature_fn, str(out), batch_size=10, progress=False)


def test_sample_metrics_match_the_metrics_on_the_same_features(npz_data, tmp_path):
  path, images = npz_data
  samples = tmp_path / "samples"
  samples.mkdir()
  for start in range(0, 25, 8):  # chunks as pipeline.sample writes them
    fileio.savez(str(samples / f"samples_{start:07d}.npz"), images=images[start:start + 8])
  config = features.data_config("npz", root=str(path), image_size=8)
  stats = tmp_path / "stats.npz"
  sj_eval.compute_stats(config, "train", fake_feature_fn, str(stats), batch_size=7, progress=False)
  result = sj_eval.sample_metrics(samples, fake_feature_fn, stats=str(stats), batch_size=6, is_splits=1,
                                  reference_features=fake_feature_fn(images / 255.0)["pool3"], progress=False)
  assert result["num_samples"] == 25
  assert abs(result["fid"]) <= 1e-6  # the same images as the reference
  feats = fake_feature_fn(images.astype(np.float32) / 255.0)
  assert result["inception_score"] == pytest.approx(metrics.inception_score(feats["logits"], splits=1)[0], rel=1e-6)
  assert result["inception_score_one_split"] == pytest.approx(result["inception_score"], rel=1e-12)
  five = sj_eval.metrics_of_features(feats, is_splits=5)
  assert five["inception_score_splits"] == 5
  assert five["inception_score"] == pytest.approx(metrics.inception_score(feats["logits"], splits=5)[0], rel=1e-12)
  assert five["inception_score_one_split"] == pytest.approx(result["inception_score"], rel=1e-6)
  assert np.isfinite(result["kid"])
  assert sj_eval.sample_metrics(samples, fake_feature_fn, limit=10, progress=False)["num_samples"] == 10


class _Counting:
  """fake_feature_fn, counting the images fed to it."""

  tag = "counting"

  def __init__(self):
    self.images = 0

  def __call__(self, images):
    self.images += len(images)
    return fake_feature_fn(images)


def test_sample_metrics_store_and_reuse_features_of_the_same_images_only(npz_data, tmp_path):
  _, images = npz_data
  samples = tmp_path / "samples"
  samples.mkdir()
  for start in range(0, 25, 8):  # chunks as pipeline.sample writes them, with their sample indices
    fileio.savez(str(samples / f"samples_{start:07d}.npz"), images=images[start:start + 8],
                 index=np.arange(start, min(start + 8, 25)))
  fn = _Counting()
  first = sj_eval.sample_metrics(samples, fn, batch_size=8, is_splits=1, progress=False)
  assert fn.images == 32 and first["feature_chunks_computed"] == 4  # 4 chunks, the last padded to 8
  assert sorted(p.name for p in (samples / "features_counting").iterdir()) == [
      f"features_{s:07d}.npz" for s in (0, 8, 16, 24)]
  fed_once = sj_eval.sample_metrics(samples, fake_feature_fn, batch_size=8, is_splits=1, progress=False,
                                    store_features=False)
  fn.images = 0
  again = sj_eval.sample_metrics(samples, fn, batch_size=8, is_splits=1, progress=False)
  assert fn.images == 0 and again["feature_chunks_computed"] == 0
  assert again["inception_score"] == pytest.approx(fed_once["inception_score"], rel=1e-6)  # float32 storage
  assert sj_eval.sample_metrics(samples, fn, limit=10, progress=False)["num_samples"] == 10 and fn.images == 0
  # a chunk replaced by other images: its features are recomputed, the others are kept
  other = np.ascontiguousarray(images[8:16][::-1])
  fileio.savez(str(samples / "samples_0000008.npz"), images=other, index=np.arange(8, 16))
  replaced = sj_eval.sample_metrics(samples, fn, batch_size=8, is_splits=1, progress=False)
  assert fn.images == 8 and replaced["feature_chunks_computed"] == 1
  # a missing chunk in the middle is an error, not a silently shorter set
  (samples / "samples_0000016.npz").unlink()
  with pytest.raises(ValueError, match="a chunk is missing"):
    sj_eval.sample_metrics(samples, fn, progress=False)


def test_cli_errors_before_work(tmp_path, capsys):
  code = sj_eval.main(["stats", "--dataset", "npz", "--root", str(tmp_path / "missing.npz"), "--weights",
                       str(tmp_path / "w.npz"), "--out", str(tmp_path / "s.npz"), "--no_progress"])
  assert code == 1 and "missing.npz" in capsys.readouterr().err
  existing = tmp_path / "s.npz"
  existing.write_bytes(b"keep")
  code = sj_eval.main(["stats", "--dataset", "npz", "--root", "x.npz", "--weights", "w.npz", "--out", str(existing)])
  assert code == 1 and existing.read_bytes() == b"keep"
  code = sj_eval.main(["metrics", "--samples", str(tmp_path), "--stats", str(tmp_path / "nope.npz"), "--weights",
                       "w.npz"])
  assert code == 1 and "nope.npz" in capsys.readouterr().err


def test_images_must_be_uint8_rgb():
  with pytest.raises(ValueError, match="uint8"):
    sj_eval.features_of([np.zeros((2, 8, 8, 3), np.float32)], fake_feature_fn, progress=False)
  with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
    sj_eval.features_of([np.zeros((2, 8, 8, 1), np.uint8)], fake_feature_fn, progress=False)
  json.dumps(features.data_config("npz").to_dict())  # the data config is plain data


def _stats_file(path, pool3, **extra):
  mu, sigma = metrics.feature_statistics(pool3)
  metrics.save_stats(str(path), mu, sigma, num_examples=np.int64(len(pool3)), pool_3=pool3.astype(np.float32),
                     **extra)
  return str(path)


def test_fid_between_two_statistics_files_is_the_closed_form_and_refuses_mixed_conventions(tmp_path, capsys):
  # Oracle: for diagonal covariances FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
  d = 4
  mu1, mu2 = np.arange(d, dtype=np.float64), np.full(d, 0.5)
  a, b = np.array([1.0, 2.0, 0.5, 3.0]), np.array([0.25, 2.0, 4.0, 1.0])
  p1, p2 = tmp_path / "a.npz", tmp_path / "b.npz"
  metrics.save_stats(str(p1), mu1, np.diag(a), resize=np.str_("tf"), features=np.str_("inception_x"))
  metrics.save_stats(str(p2), mu2, np.diag(b), resize=np.str_("tf"), features=np.str_("inception_x"))
  expected = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
  result = features.compare_stats(str(p1), str(p2))
  assert result["fid"] == pytest.approx(expected, rel=1e-9)
  assert result["kid"] is None and "save_features" in result["kid_unavailable"]
  assert result["stats"][str(p1)]["resize"] == "tf"
  # the command line writes the same as JSON
  out = tmp_path / "fid.json"
  assert sj_eval.main(["fid", str(p1), str(p2), "--out", str(out)]) == 0
  assert json.loads(out.read_text())["fid"] == pytest.approx(expected, rel=1e-9)
  capsys.readouterr()
  # different conventions or networks are refused, naming both
  p3 = tmp_path / "c.npz"
  metrics.save_stats(str(p3), mu2, np.diag(b), resize=np.str_("pytorch"), features=np.str_("inception_x"))
  with pytest.raises(ValueError, match="resize conventions: 'tf' vs 'pytorch'"):
    features.compare_stats(str(p1), str(p3))
  p4 = tmp_path / "d.npz"
  metrics.save_stats(str(p4), mu2, np.diag(b), resize=np.str_("tf"), features=np.str_("inception_y"))
  with pytest.raises(ValueError, match="feature networks"):
    features.compare_stats(str(p1), str(p4))
  assert sj_eval.main(["fid", str(p1), str(tmp_path / "missing.npz")]) == 1
  assert "missing.npz" in capsys.readouterr().err


def test_fid_between_statistics_files_gives_kid_of_their_features_and_warns_below_10k(tmp_path):
  rng = np.random.default_rng(3)
  x, y = rng.standard_normal((1500, 6)), rng.standard_normal((1200, 6)) + 0.3
  p1, p2 = _stats_file(tmp_path / "x.npz", x), _stats_file(tmp_path / "y.npz", y)
  result = features.compare_stats(p1, p2)
  kid, kid_std = metrics.kid(x.astype(np.float32), y.astype(np.float32))
  assert result["kid"] == pytest.approx(kid, rel=1e-6) and result["kid_std"] == pytest.approx(kid_std, rel=1e-6)
  assert result["kid"] > 5 * result["kid_std"] > 0  # a 0.3 shift in every coordinate is plainly detected
  mx, sx = metrics.feature_statistics(x)
  my, sy = metrics.feature_statistics(y)
  assert result["fid"] == pytest.approx(metrics.fid(mx, sx, my, sy), rel=1e-9)
  assert len(result["warnings"]) == 2 and "1500 examples" in result["warnings"][0]
