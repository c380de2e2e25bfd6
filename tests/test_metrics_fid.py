"""Oracles for the Inception metrics: FID, Inception Score, KID and the reference statistics files."""

import json

import numpy as np
import pytest
import scipy.linalg
from helpers import SHARED

from score_jax import metrics

FID_FIXTURE = SHARED / "fixtures" / "pytorch_fid_inception"


def _random_cov(rng, d, rank=None):
  a = rng.normal(size=(d, rank or d))
  return a @ a.T / (rank or d) + (0.0 if rank else 0.1) * np.eye(d)


def _fid_reference(mu1, s1, mu2, s2):
  """Independent FID: scipy sqrtm of the symmetric form ``s1^{1/2} s2 s1^{1/2}`` in float64."""
  r = scipy.linalg.sqrtm(s1)
  covmean = scipy.linalg.sqrtm(r @ s2 @ r)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(np.real(covmean)))


# ------------------------------------------------------------------------------------------------------------- FID
@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_fid_of_a_set_with_itself_is_zero(rng, method):
  mu, sigma = metrics.feature_statistics(rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16)))
  assert abs(metrics.fid(mu, sigma, mu, sigma, method=method)) <= 1e-6


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_fid_diagonal_gaussians_closed_form(rng, method):
  d = 12
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  v1, v2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
  # Commuting covariances: tr(S1 + S2 - 2 (S1 S2)^{1/2}) = sum (sqrt(v1) - sqrt(v2))^2.
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  got = metrics.fid(mu1, np.diag(v1), mu2, np.diag(v2), method=method)
  assert got == pytest.approx(expected, rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_fid_full_covariances_match_symmetric_sqrtm(rng, method):
  d = 20
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
  expected = _fid_reference(mu1, s1, mu2, s2)
  assert metrics.fid(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-9)
  # FID is symmetric in its two arguments although sigma1 sigma2 is not symmetric.
  assert metrics.fid(mu2, s2, mu1, s1, method=method) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_fid_near_singular_covariances_stay_finite_and_accurate(rng, method):
  # 6 samples in 40 dimensions: covariances of rank 5, as with few samples of 2048-d Inception features.
  d, n = 40, 6
  x, y = rng.normal(size=(n, d)), rng.normal(size=(n, d)) + 0.3
  mu1, s1 = metrics.feature_statistics(x)
  mu2, s2 = metrics.feature_statistics(y)
  # Exact: with S = A^T A, S' = B^T B the non-zero eigenvalues of S S' are the squared singular values of A B^T.
  a = (x - mu1) / np.sqrt(n - 1)
  b = (y - mu2) / np.sqrt(n - 1)
  exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.linalg.svd(a @ b.T, compute_uv=False))
  got = metrics.fid(mu1, s1, mu2, s2, method=method)
  assert np.isfinite(got)
  # sqrtm of a singular product (pytorch-fid's route) is only accurate to about sqrt(round-off).
  assert got == pytest.approx(exact, rel=1e-10 if method == "eigh" else 1e-4)


@pytest.mark.filterwarnings("ignore:Matrix is singular")
def test_fid_of_disjoint_supports():
  # sigma1 sigma2 = 0: FID = tr(sigma1) + tr(sigma2).
  s1, s2 = np.diag([1.0, 0.0]), np.diag([0.0, 1.0])
  mu = np.zeros(2)
  for method in ("eigh", "sqrtm"):
    assert metrics.fid(mu, s1, mu, s2, method=method) == pytest.approx(2.0, abs=1e-12), method


def test_fid_sqrtm_retries_with_an_offset_when_not_finite(monkeypatch, rng):
  # scipy returns a non-finite sqrtm only for round-off-singular products that are hard to build on purpose, so
  # the first call is made to fail and the retry must take sqrtm of (sigma1 + eps I)(sigma2 + eps I).
  d, eps = 5, 1e-3
  s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
  calls = []
  real_sqrtm = scipy.linalg.sqrtm

  def fake_sqrtm(a):
    calls.append(a)
    return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

  monkeypatch.setattr(scipy.linalg, "sqrtm", fake_sqrtm)
  got = metrics.fid(np.zeros(d), s1, np.zeros(d), s2, method="sqrtm", eps=eps)
  assert len(calls) == 2
  np.testing.assert_allclose(calls[1], (s1 + eps * np.eye(d)) @ (s2 + eps * np.eye(d)), rtol=1e-12)
  expected = np.trace(s1 + s2) - 2 * np.trace(np.real(real_sqrtm(calls[1])))
  assert got == pytest.approx(expected, rel=1e-12)
  monkeypatch.setattr(scipy.linalg, "sqrtm", lambda a: np.full_like(a, np.inf))
  with pytest.raises(ValueError, match=r"not finite even with an offset eps=0.001"):
    metrics.fid(np.zeros(d), s1, np.zeros(d), s2, method="sqrtm", eps=eps)


def _fid_fixture():
  npz = FID_FIXTURE / "inception_seed0.npz"
  if not npz.is_file():
    pytest.skip(f"pytorch-fid fixture {npz} is absent (see {FID_FIXTURE / 'README.md'}; set SCORE_JAX_SHARED)")
  data = np.load(npz)
  return data


def test_fid_matches_pytorch_fid_on_fixture_8d():
  data = _fid_fixture()
  needed = {"fid8_mu1", "fid8_sigma1", "fid8_mu2", "fid8_sigma2", "fid_scalars"}
  if not needed <= set(data.files):
    pytest.skip(f"pytorch-fid fixture lacks {sorted(needed - set(data.files))}")
  # fid_scalars[1] is pytorch_fid.fid_score.calculate_frechet_distance on these full-rank 8-d statistics.
  expected = float(data["fid_scalars"][1])
  for method in ("eigh", "sqrtm"):
    got = metrics.fid(data["fid8_mu1"], data["fid8_sigma1"], data["fid8_mu2"], data["fid8_sigma2"], method=method)
    assert got == pytest.approx(expected, rel=1e-6), method


@pytest.mark.slow
def test_fid_matches_pytorch_fid_on_fixture_2048d():
  """Full 2048-d statistics of 16 samples each (two 2048 x 2048 eigendecompositions: ~30 s on 2 cores)."""
  data = _fid_fixture()
  if not {"fid_g1_pool3", "fid_g2_pool3", "fid_scalars"} <= set(data.files):
    pytest.skip("pytorch-fid fixture lacks fid_g1_pool3 / fid_g2_pool3 / fid_scalars")
  p1, p2 = data["fid_g1_pool3"].astype(np.float64), data["fid_g2_pool3"].astype(np.float64)
  mu1, s1 = metrics.feature_statistics(p1)
  mu2, s2 = metrics.feature_statistics(p2)
  got = metrics.fid(mu1, s1, mu2, s2)
  # Covariances of rank 15: pytorch-fid's sqrtm of the singular product is itself off by ~1.3e-5 relative (the
  # fixture README asks for ~1e-4), so the tight check is against the exact low-rank value.
  assert got == pytest.approx(float(data["fid_scalars"][0]), rel=1e-4)
  a, b = (p1 - mu1) / np.sqrt(len(p1) - 1), (p2 - mu2) / np.sqrt(len(p2) - 1)
  exact = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.linalg.svd(a @ b.T, compute_uv=False))
  assert got == pytest.approx(exact, rel=1e-9)


# ------------------------------------------------------------------------------------------ Inception Score
def test_inception_score_of_uniform_logits_is_one():
  mean, std = metrics.inception_score(np.full((100, 1008), 3.0), splits=10)
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("num_classes, splits", [(10, 10), (1008, 2)])
def test_inception_score_of_confident_balanced_logits_is_the_class_count(num_classes, splits):
  # Each split holds every class equally often, each sample predicted with certainty.
  labels = np.tile(np.arange(num_classes), 2 * splits)
  logits = 60.0 * np.eye(num_classes)[labels]
  mean, std = metrics.inception_score(logits, splits=splits)
  assert mean == pytest.approx(num_classes, rel=1e-6) and std <= 1e-6 * num_classes


def test_inception_score_matches_fixture_one_split():
  data = _fid_fixture()
  info = json.loads((FID_FIXTURE / "inception_seed0.json").read_text()).get("inception_score_32_fid_images", {})
  if "with_bias" not in info or not {"fid_g1_logits", "fid_g2_logits"} <= set(data.files):
    pytest.skip("pytorch-fid fixture lacks the inception score of the 32 FID images")
  logits = np.concatenate([data["fid_g1_logits"], data["fid_g2_logits"]])
  mean, std = metrics.inception_score(logits, splits=1)
  assert mean == pytest.approx(info["with_bias"], rel=1e-9) and std == 0.0


def test_inception_score_is_invariant_to_logit_shifts(rng):
  logits = rng.normal(size=(50, 30)) * 4
  shifted = logits + rng.normal(size=(50, 1)) * 1e3  # softmax is shift-invariant; logsumexp keeps it stable
  assert metrics.inception_score(shifted, splits=5) == pytest.approx(metrics.inception_score(logits, splits=5))


# ------------------------------------------------------------------------------------------------------- KID
def _cubic_kernel_mmd2_gaussians(mu1, s1, mu2, s2):
  """Exact MMD^2 of N(mu1, s1), N(mu2, s2) under (x.y/d + 1)^3 = 1 + 3 u + 3 u^2 + u^3 with u = x.y / d.

  E[(x.y)^p] for independent x, y is the inner product of the p-th moment tensors, so
  MMD^2 = sum_p c_p / d^p |M_p(1) - M_p(2)|^2 with c = (3, 3, 1) and Gaussian moment tensors M_p.
  """
  d = len(mu1)

  def moments(mu, s):
    m2 = s + np.outer(mu, mu)
    m3 = (np.einsum("i,j,k->ijk", mu, mu, mu) + np.einsum("i,jk->ijk", mu, s) + np.einsum("j,ik->ijk", mu, s)
          + np.einsum("k,ij->ijk", mu, s))
    return mu, m2, m3

  return sum(c / d ** (p + 1) * np.sum((a - b) ** 2)
             for p, (c, a, b) in enumerate(zip((3, 3, 1), moments(mu1, s1), moments(mu2, s2))))


def _kid_trials(rng, mu1, s1, mu2, s2, n=60, trials=300):
  """KID over independent small sample pairs (each a single exact U-statistic): their mean and standard error."""
  l1, l2 = np.linalg.cholesky(s1), np.linalg.cholesky(s2)
  values = []
  for _ in range(trials):
    x = mu1 + rng.normal(size=(n, len(mu1))) @ l1.T
    y = mu2 + rng.normal(size=(n, len(mu2))) @ l2.T
    mean, std = metrics.kid(x, y)
    assert std == 0.0  # n <= subset_size: all samples, one estimate
    values.append(mean)
  return np.mean(values), np.std(values) / np.sqrt(trials)


def test_kid_is_unbiased_for_the_same_distribution(rng):
  d = 3
  mu, s = rng.normal(size=d), _random_cov(rng, d)
  mean, se = _kid_trials(rng, mu, s, mu, s)
  assert abs(mean) < 4 * se


def test_kid_is_unbiased_for_different_gaussians(rng):
  d = 3
  mu1, mu2 = np.zeros(d), np.full(d, 0.5)
  s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
  expected = _cubic_kernel_mmd2_gaussians(mu1, s1, mu2, s2)
  mean, se = _kid_trials(rng, mu1, s1, mu2, s2)
  assert expected > 10 * se  # the test can tell a real difference from 0
  assert abs(mean - expected) < 4 * se
  # The closed form itself against a large-sample V-statistic is not needed: the unbiased trials pin it down.


def test_kid_subsets_average_the_unbiased_estimate(rng):
  x, y = rng.normal(size=(300, 4)), rng.normal(size=(250, 4)) + 0.2
  full, _ = metrics.kid(x, y)
  mean, std = metrics.kid(x, y, num_subsets=200, subset_size=100, seed=3)
  assert std > 0 and abs(mean - full) < 4 * std / np.sqrt(200) + 1e-12
  assert metrics.kid(x, y, num_subsets=5, subset_size=100, seed=3) == metrics.kid(
      x, y, num_subsets=5, subset_size=100, seed=3)
  # A set smaller than subset_size is used whole; the other one is subsampled.
  _, std_small = metrics.kid(x[:50], y, num_subsets=5, subset_size=100, seed=1)
  assert std_small > 0


# ------------------------------------------------------------------------------------------------ statistics files
def test_feature_statistics_match_numpy(rng):
  features = rng.normal(size=(40, 5)).astype(np.float32)
  mu, sigma = metrics.feature_statistics(features)
  assert mu.dtype == sigma.dtype == np.float64
  np.testing.assert_allclose(mu, features.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-12)


def test_save_and_load_stats_round_trip(tmp_path, rng):
  mu, sigma = metrics.feature_statistics(rng.normal(size=(30, 6)))
  path = str(tmp_path / "cifar10_stats.npz")
  metrics.save_stats(path, mu, sigma, num_samples=30)
  with np.load(path) as data:
    assert set(data.files) == {"mu", "sigma", "num_samples"}
  mu2, sigma2 = metrics.load_stats(path)
  np.testing.assert_array_equal(mu2, mu)
  np.testing.assert_array_equal(sigma2, sigma)
  assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_load_stats_reads_pytorch_fid_and_score_sde_files(tmp_path, rng):
  features = rng.normal(size=(20, 4)).astype(np.float32)
  mu, sigma = features.mean(0), np.cov(features, rowvar=False)
  np.savez(tmp_path / "pytorch_fid.npz", mu=mu, sigma=sigma)  # pytorch-fid --save-stats: float32 mu
  np.savez(tmp_path / "score_sde.npz", pool_3=features, logits=rng.normal(size=(20, 9)))
  for name in ("pytorch_fid.npz", "score_sde.npz"):
    got_mu, got_sigma = metrics.load_stats(str(tmp_path / name))
    np.testing.assert_allclose(got_mu, mu, rtol=1e-6)
    np.testing.assert_allclose(got_sigma, sigma, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------- bad input
def test_fid_rejects_stats_of_another_dimension(rng):
  mu1, s1 = metrics.feature_statistics(rng.normal(size=(10, 4)))
  mu2, s2 = metrics.feature_statistics(rng.normal(size=(10, 3)))
  with pytest.raises(ValueError, match=r"D=4 but mu2/sigma2 have D=3"):
    metrics.fid(mu1, s1, mu2, s2)


@pytest.mark.parametrize("case", ["sigma_shape", "mu_rank", "empty", "nan", "asymmetric", "method"])
def test_fid_rejects_bad_statistics(case):
  mu, sigma = np.zeros(3), np.eye(3)
  args, kwargs, match = {
      "sigma_shape": ((mu, np.eye(4), mu, sigma), {}, r"sigma1 must be \[D, D\] with D = len\(mu1\) = 3"),
      "mu_rank": ((mu[None], sigma, mu, sigma), {}, r"mu1 must be a mean vector \[D\].*\(1, 3\)"),
      "empty": ((np.zeros(0), np.zeros((0, 0)), mu, sigma), {}, r"mu1 must have at least one feature"),
      "nan": ((mu, sigma, np.array([0.0, np.nan, 0.0]), sigma), {}, r"mu2 contains 1 non-finite"),
      "asymmetric": ((mu, sigma, mu, np.triu(np.ones((3, 3)))), {}, r"sigma2 must be a symmetric"),
      "method": ((mu, sigma, mu, sigma), {"method": "svd"}, r"Unknown FID method 'svd'"),
  }[case]
  with pytest.raises(ValueError, match=match):
    metrics.fid(*args, **kwargs)


def test_fid_rejects_indefinite_covariances():
  # A symmetric "covariance" with eigenvalue -1: sqrtm(sigma1 sigma2) is genuinely complex.
  mu, bad = np.zeros(2), np.diag([1.0, -1.0])
  with pytest.raises(ValueError, match=r"imaginary diagonal part"):
    metrics.fid(mu, np.eye(2), mu, bad, method="sqrtm")
  with pytest.raises(ValueError, match=r"\(so sigma2\) is not positive semi-definite: smallest eigenvalue -1"):
    metrics.fid(mu, np.eye(2), mu, bad)
  with pytest.raises(ValueError, match=r"sigma1 is not positive semi-definite: smallest eigenvalue -1"):
    metrics.fid(mu, bad, mu, np.eye(2))


def test_metrics_reject_nan_features_and_bad_logits(rng):
  x = rng.normal(size=(10, 4))
  bad = x.copy()
  bad[3, 1] = np.nan
  with pytest.raises(ValueError, match=r"features contains 1 non-finite"):
    metrics.feature_statistics(bad)
  with pytest.raises(ValueError, match=r"features2 contains 1 non-finite"):
    metrics.kid(x, bad)
  with pytest.raises(ValueError, match=r"features1 has D=4 but features2 has D=3"):
    metrics.kid(x, x[:, :3])
  with pytest.raises(ValueError, match=r"subset_size must be an integer >= 2; got 1"):
    metrics.kid(x, x, subset_size=1)
  with pytest.raises(ValueError, match=r"features1 needs at least 2 samples; got shape \(1, 4\)"):
    metrics.kid(x[:1], x)
  with pytest.raises(ValueError, match=r"logits must be \[N, num_classes\].*\(10, 4, 1\)"):
    metrics.inception_score(x[..., None])
  with pytest.raises(ValueError, match=r"logits must be \[N, num_classes\].*\(4,\)"):
    metrics.inception_score(x[0])
  with pytest.raises(ValueError, match=r"logits contains 1 non-finite"):
    metrics.inception_score(bad, splits=2)
  with pytest.raises(ValueError, match=r"splits must be an integer in \[1, N=10\]; got 11"):
    metrics.inception_score(x, splits=11)


def test_load_stats_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"missing.npz"):
    metrics.load_stats(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "wrong_keys.npz", mean=np.zeros(3), cov=np.eye(3))
  with pytest.raises(ValueError, match=r"has keys \['cov', 'mean'\]; expected 'mu' and 'sigma'"):
    metrics.load_stats(str(tmp_path / "wrong_keys.npz"))
  np.savez(tmp_path / "bad_shape.npz", mu=np.zeros(3), sigma=np.eye(2))
  with pytest.raises(ValueError, match=r"sigma must be \[D, D\] with D = len\(mu\) = 3"):
    metrics.load_stats(str(tmp_path / "bad_shape.npz"))
  (tmp_path / "text.npz").write_text("not a zip")
  with pytest.raises(ValueError, match=r"text.npz' is not a readable .npz file"):
    metrics.load_stats(str(tmp_path / "text.npz"))
  np.save(tmp_path / "single.npy", np.zeros(3))
  with pytest.raises(ValueError, match=r"single array of shape \(3,\), not an archive"):
    metrics.load_stats(str(tmp_path / "single.npy"))
  with pytest.raises(ValueError, match=r"sigma must be \[D, D\] with D = len\(mu\) = 2"):
    metrics.save_stats(str(tmp_path / "x.npz"), np.zeros(2), np.eye(3))
  assert not (tmp_path / "x.npz").exists()
