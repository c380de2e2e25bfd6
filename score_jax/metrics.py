"""Sample-quality metrics.

Low-dimensional (2-D toy) distances in JAX: sliced Wasserstein and MMD. Image metrics on Inception features in
numpy/scipy float64: FID, Inception Score, KID, and the FID reference statistics files.
"""

from __future__ import annotations

import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special

from score_jax import fileio, validation

Array = jax.Array

__all__ = [
    "sliced_wasserstein", "mmd_rbf", "fid", "inception_score", "kid", "feature_statistics", "save_stats", "load_stats",
]


def sliced_wasserstein(key: Array, x: Array, y: Array, n_projections: int = 256) -> Array:
  """Sliced 2-Wasserstein distance between equal-size samples ``x, y [n, D]``.

  ``sqrt(E_u W_2^2(u^T x, u^T y))`` over random unit directions ``u``; each 1-D ``W_2`` is exact (sorted
  samples).
  """
  if x.shape != y.shape:
    raise ValueError(f"x and y must have the same shape, got {x.shape} and {y.shape}.")
  u = jax.random.normal(key, (n_projections, x.shape[1]))
  u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
  px, py = jnp.sort(x @ u.T, axis=0), jnp.sort(y @ u.T, axis=0)
  return jnp.sqrt(jnp.mean((px - py) ** 2))


def mmd_rbf(x: Array, y: Array, bandwidths=(0.1, 0.3, 1.0, 3.0)) -> Array:
  """Unbiased squared MMD with a sum of RBF kernels ``exp(-|a - b|^2 / (2 h^2))`` over ``bandwidths``."""
  def kernel(a, b):
    d2 = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    return sum(jnp.exp(-d2 / (2 * h**2)) for h in bandwidths)

  n, m = x.shape[0], y.shape[0]
  kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
  sum_xx = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
  sum_yy = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
  return sum_xx + sum_yy - 2 * jnp.mean(kxy)


# ---------------------------------------------------------------------------------------------------------------------
# Inception metrics (FID, Inception Score, KID) and reference statistics.
#
# These run once per evaluation on features already pulled to the host, so they are plain numpy/scipy in float64
# (jax on CPU defaults to float32, which is not enough for the 2048 x 2048 matrix square root of FID).
# ---------------------------------------------------------------------------------------------------------------------

# pytorch-fid's diagonal offset for the `sqrtm` route when sqrtm(sigma1 sigma2) is not finite.
FID_SQRTM_EPS = 1e-6
# pytorch-fid / TTUR raise when the diagonal of sqrtm(sigma1 sigma2) has an imaginary part above this.
FID_SQRTM_IMAG_ATOL = 1e-3
# Relative asymmetry |sigma - sigma^T| / max|sigma| above which a "covariance" is rejected: float32 round-off of a
# covariance accumulated over 50k samples stays around 1e-5; a matrix that is not a covariance is off by O(1).
_SYMMETRY_RTOL = 1e-4
# Relative size -min(eigenvalue) / max|eigenvalue| above which a matrix is not positive semi-definite; float64
# round-off of the eigenvalues is ~D * 1e-16, far below this.
_PSD_RTOL = 1e-8
# Kernel Inception Distance defaults of Binkowski et al. (2018) and torch-fidelity.
KID_NUM_SUBSETS = 100
KID_SUBSET_SIZE = 1000


def _as_finite_float64(x, name: str, ndim: int, what: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != ndim:
    raise ValueError(f"{name} must be {what} (rank {ndim}); got shape {x.shape}.")
  if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
    raise ValueError(f"{name} must be a real numeric array; got dtype {x.dtype}.")
  x = x.astype(np.float64)
  if not np.all(np.isfinite(x)):
    bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
    raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf); expected finite numbers.")
  return x


def _check_stats(mu, sigma, name: str = "") -> tuple[np.ndarray, np.ndarray]:
  """``mu [D]`` and ``sigma [D, D]`` as finite float64 arrays, ``sigma`` symmetrised; ValueError otherwise."""
  mu = _as_finite_float64(mu, f"mu{name}", 1, "a mean vector [D]")
  sigma = _as_finite_float64(sigma, f"sigma{name}", 2, "a covariance matrix [D, D]")
  if mu.shape[0] < 1:
    raise ValueError(f"mu{name} must have at least one feature; got shape {mu.shape}.")
  if sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f"sigma{name} must be [D, D] with D = len(mu{name}) = {mu.shape[0]}; got shape {sigma.shape}.")
  asymmetry = np.max(np.abs(sigma - sigma.T), initial=0.0)
  if asymmetry > _SYMMETRY_RTOL * np.max(np.abs(sigma), initial=0.0):
    raise ValueError(f"sigma{name} must be a symmetric covariance matrix; max |sigma - sigma^T| = {asymmetry:.3g}.")
  return mu, (sigma + sigma.T) / 2


def _check_psd(w: np.ndarray, name: str) -> None:
  """Raise if the eigenvalues ``w`` are negative beyond round-off."""
  scale = np.max(np.abs(w), initial=0.0)
  if w.size and w.min() < -_PSD_RTOL * scale:
    raise ValueError(
        f"{name} is not positive semi-definite: smallest eigenvalue {w.min():.3g} (largest |eigenvalue| "
        f"{scale:.3g}); expected a covariance matrix.")


def _psd_sqrt(sigma: np.ndarray, name: str) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix; round-off negative eigenvalues count as 0."""
  w, u = np.linalg.eigh(sigma)
  _check_psd(w, name)
  return (u * np.sqrt(np.clip(w, 0.0, None))) @ u.T


def _trace_sqrt_product_eigh(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """``tr sqrt(sigma1 sigma2)`` as ``tr sqrt(A sigma2 A)`` with ``A = sigma1^{1/2}`` (TF-GAN's symmetric route).

  ``sigma1 sigma2`` is similar to the symmetric PSD ``A sigma2 A``, so both have the same real non-negative
  eigenvalues and the trace of the square root is the sum of their square roots. Eigenvalues below the numerical
  rank tolerance ``max(w) * D * eps`` (as ``np.linalg.matrix_rank``) are round-off and count as 0: with
  rank-deficient covariances (fewer samples than dimensions) the square roots of that noise would otherwise add
  up to a visible error (1e-6 relative on the pytorch-fid fixture, 6e-13 with the cut).
  """
  a = _psd_sqrt(sigma1, "sigma1")
  m = a @ sigma2 @ a
  w = np.linalg.eigvalsh((m + m.T) / 2)
  # A sigma2 A is PSD when sigma2 is; a clearly negative eigenvalue means sigma2 is not a covariance.
  _check_psd(w, "sigma1^{1/2} sigma2 sigma1^{1/2} (so sigma2)")
  tol = np.max(np.abs(w), initial=0.0) * w.shape[0] * np.finfo(np.float64).eps
  return float(np.sum(np.sqrt(np.where(w > tol, w, 0.0))))


def _trace_sqrt_product_sqrtm(sigma1: np.ndarray, sigma2: np.ndarray, eps: float) -> float:
  """``tr sqrtm(sigma1 sigma2)`` by scipy's general matrix square root, as pytorch-fid / TTUR compute it.

  A product with a non-finite square root (singular covariances) is retried as ``(sigma1 + eps I)(sigma2 + eps I)``;
  an imaginary part of the result (round-off of the non-symmetric product) is dropped when its diagonal is below
  ``FID_SQRTM_IMAG_ATOL`` and raises otherwise.
  """
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  if not np.all(np.isfinite(covmean)):
    offset = eps * np.eye(sigma1.shape[0])
    covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    imag = np.max(np.abs(np.diagonal(covmean).imag), initial=0.0)
    if imag > FID_SQRTM_IMAG_ATOL:
      raise ValueError(
          f"sqrtm(sigma1 sigma2) has an imaginary diagonal part of {imag:.3g} (> {FID_SQRTM_IMAG_ATOL}); the "
          "covariances are not valid PSD matrices or are too ill-conditioned for method='sqrtm' (try 'eigh').")
    covmean = covmean.real
  if not np.all(np.isfinite(covmean)):
    raise ValueError(f"sqrtm(sigma1 sigma2) is not finite even with an offset eps={eps}; try method='eigh'.")
  return float(np.trace(covmean))


def fid(mu1, sigma1, mu2, sigma2, *, method: str = "eigh", eps: float = FID_SQRTM_EPS) -> float:
  """Frechet distance between the Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (FID of Heusel et al. 2017).

  ``d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1^{1/2} sigma2 sigma1^{1/2})^{1/2})``, in float64.

  Args:
    mu1, mu2: feature means ``[D]`` (Inception pool_3: D = 2048).
    sigma1, sigma2: feature covariances ``[D, D]``, symmetric positive semi-definite.
    method: ``"eigh"`` (default) takes the trace through two symmetric eigendecompositions, as TF-GAN (and so the
      original score_sde evaluation) does; it is real and finite by construction, also for rank-deficient
      covariances. ``"sqrtm"`` follows pytorch-fid: ``scipy.linalg.sqrtm(sigma1 @ sigma2)``, retried with
      ``eps * I`` added to both covariances when not finite; a small imaginary part is dropped, a large one raises.
      Both agree to round-off on well-conditioned input; on singular input ``"eigh"`` is the more accurate.
    eps: the diagonal offset of the ``"sqrtm"`` retry.

  Returns:
    The squared Frechet distance (what is reported as "FID") as a Python float.

  Raises:
    ValueError: shapes other than ``[D]`` / ``[D, D]`` (D >= 1), different D on the two sides, non-finite
      values, a non-symmetric or (``"eigh"``) not positive semi-definite sigma, an unknown method, or
      (``"sqrtm"``) a large imaginary part.
  """
  mu1, sigma1 = _check_stats(mu1, sigma1, "1")
  mu2, sigma2 = _check_stats(mu2, sigma2, "2")
  if mu1.shape != mu2.shape:
    raise ValueError(
        f"FID needs statistics of the same feature dimension: mu1/sigma1 have D={mu1.shape[0]} but mu2/sigma2 have "
        f"D={mu2.shape[0]} (Inception pool_3 statistics have D=2048).")
  if method == "eigh":
    tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
  elif method == "sqrtm":
    tr_covmean = _trace_sqrt_product_sqrtm(sigma1, sigma2, eps)
  else:
    raise ValueError(f"Unknown FID method {method!r}; expected 'eigh' or 'sqrtm'.")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """Inception Score ``exp(E_x KL(p(y|x) || p(y)))`` (Salimans et al. 2016) from classifier logits.

  ``p(y|x)`` is the softmax over ALL columns of ``logits``: for the TF-GAN / score_sde Inception graph these are
  its 1008 logits (the 2015 graph's output layer is wider than the 1000 ImageNet classes), and TF-GAN's
  ``classifier_score_from_logits``, which the original score_sde calls, softmaxes all of them; nothing is sliced
  away. (The OpenAI reference code also uses all 1008 outputs but forms its logits without the final bias; pass
  such logits to reproduce it.) ``p(y)`` is the mean of ``p(y|x)`` within each split. The samples are cut into
  ``splits`` consecutive parts (``np.array_split``, sizes differing by at most one) and the score is computed per
  part, the OpenAI / torch-fidelity convention with 10 splits. score_sde reports TF-GAN's single score over all
  50k samples: pass ``splits=1`` to reproduce that number (std is then 0).

  Args:
    logits: ``[N, C]`` logits (C = 1008 for the FID Inception network), any float dtype; computed in float64.
    splits: number of parts, ``1 <= splits <= N``.

  Returns:
    ``(mean, std)`` over the splits as Python floats (std with ddof=0, as the OpenAI code).
  """
  logits = _as_finite_float64(logits, "logits", 2, "[N, num_classes] classifier logits")
  n = logits.shape[0]
  if not validation.is_int(splits, 1, n):
    raise ValueError(f"splits must be an integer in [1, N={n}]; got {splits!r}.")
  log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)  # [N, C] log p(y|x)
  scores = []
  for part in np.array_split(log_p, int(splits)):
    p = np.exp(part)
    log_py = np.log(np.mean(p, axis=0))  # [C] log p(y) of this split
    kl = np.sum(p * (part - log_py), axis=1)  # [n_part]
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores)), float(np.std(scores))


def _check_features(features, name: str) -> np.ndarray:
  features = _as_finite_float64(features, name, 2, "[N, D] features")
  if features.shape[0] < 2:
    raise ValueError(f"{name} needs at least 2 samples; got shape {features.shape}.")
  return features


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of ``x [m, D]`` and ``y [n, D]`` with the kernel ``k(a, b) = (a.b / D + 1)^3``.

  The within-set sums leave out the diagonal ``k(x_i, x_i)`` (a U-statistic), so the expectation is the population
  MMD^2 for any m, n >= 2.
  """
  d = x.shape[1]
  kxx = (x @ x.T / d + 1.0) ** 3
  kyy = (y @ y.T / d + 1.0) ** 3
  kxy = (x @ y.T / d + 1.0) ** 3
  m, n = x.shape[0], y.shape[0]
  term_xx = (np.sum(kxx) - np.trace(kxx)) / (m * (m - 1))
  term_yy = (np.sum(kyy) - np.trace(kyy)) / (n * (n - 1))
  return float(term_xx + term_yy - 2.0 * np.mean(kxy))


def kid(features1, features2, *, num_subsets: int = KID_NUM_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0) -> tuple[float, float]:
  """Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with the kernel ``(x.y / D + 1)^3``.

  The estimate is averaged over ``num_subsets`` random subsets of ``subset_size`` samples drawn without replacement
  from each set (the procedure of the paper's code and torch-fidelity). A set with at most ``subset_size``
  samples is used whole in every subset; when both are, all subsets are the same and the single exact U-statistic
  is returned with std 0. (TF-GAN's ``kernel_classifier_distance``, used by score_sde, averages over disjoint
  blocks instead; both are unbiased estimates of the same MMD^2.)

  Args:
    features1, features2: ``[N1, D]`` and ``[N2, D]`` features (Inception pool_3), N >= 2; computed in float64.
    num_subsets: number of random subsets (>= 1).
    subset_size: samples per subset from each set (>= 2).
    seed: seed of the numpy generator that draws the subsets.

  Returns:
    ``(mean, std)`` of the per-subset MMD^2 estimates as Python floats (std with ddof=0). The mean can be slightly
    negative when the two distributions are equal, since the estimator is unbiased.
  """
  x = _check_features(features1, "features1")
  y = _check_features(features2, "features2")
  if x.shape[1] != y.shape[1]:
    raise ValueError(
        f"KID needs features of the same dimension: features1 has D={x.shape[1]} but features2 has D={y.shape[1]}.")
  for name, value, low in (("num_subsets", num_subsets, 1), ("subset_size", subset_size, 2)):
    if not validation.is_int(value, low):
      raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
  m1, m2 = min(subset_size, x.shape[0]), min(subset_size, y.shape[0])
  if m1 == x.shape[0] and m2 == y.shape[0]:
    return _polynomial_mmd2_unbiased(x, y), 0.0
  rng = np.random.default_rng(seed)
  estimates = []
  for _ in range(num_subsets):
    xs = x if m1 == x.shape[0] else x[rng.choice(x.shape[0], m1, replace=False)]
    ys = y if m2 == y.shape[0] else y[rng.choice(y.shape[0], m2, replace=False)]
    estimates.append(_polynomial_mmd2_unbiased(xs, ys))
  return float(np.mean(estimates)), float(np.std(estimates))


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of ``features [N, D]`` (N >= 2) in float64, for :func:`fid`.

  Returns:
    ``mu [D]`` and ``sigma [D, D]``; sigma has ddof=1, like ``np.cov(features, rowvar=False)`` in pytorch-fid and
    TF-GAN. (pytorch-fid takes the mean of float32 features in float32; the difference is float32 round-off.)
  """
  features = _check_features(features, "features")
  return np.mean(features, axis=0), np.cov(features, rowvar=False)


def save_stats(path: str, mu, sigma, **extra) -> None:
  """Write FID reference statistics to the ``.npz`` file ``path`` (exactly that name) atomically.

  The keys are ``mu`` and ``sigma`` (float64), the layout of pytorch-fid's ``--save-stats`` and TTUR's
  ``fid_stats_*.npz`` files; ``extra`` arrays (e.g. ``num_samples=50000``, ``dataset="cifar10"``) are stored beside.
  """
  mu, sigma = _check_stats(mu, sigma)
  fileio.savez(path, mu=mu, sigma=sigma, **extra)


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Read FID reference statistics ``(mu [D], sigma [D, D])`` (float64) from an ``.npz`` file.

  Accepted layouts:
    * ``mu`` and ``sigma``: files from :func:`save_stats`, pytorch-fid ``--save-stats`` and TTUR / TF-GAN style
      ``fid_stats_*.npz`` (and the reference batches of openai/guided-diffusion, which also hold ``mu``/``sigma``).
    * ``pool_3``: the raw ``[N, 2048]`` Inception features of the original score_sde ``assets/stats/*_stats.npz``;
      their statistics are computed with :func:`feature_statistics`.
  (No documented ``mean``/``cov`` variant was found, so those keys are not guessed at.)

  Raises:
    FileNotFoundError: no file at ``path``.
    ValueError: not an ``.npz`` archive, none of the layouts above (the error lists the keys found), or bad shapes
      or values.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"FID statistics file {path!r} does not exist.")
  try:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
      raise ValueError(f"it holds a single array of shape {np.shape(data)}, not an archive")
    with data:
      arrays = {key: data[key] for key in data.files if key in ("mu", "sigma", "pool_3")}
      keys = sorted(data.files)
  except (zipfile.BadZipFile, OSError, ValueError) as e:
    raise ValueError(f"{path!r} is not a readable .npz file of FID statistics: {e}") from e
  if "mu" in arrays and "sigma" in arrays:
    return _check_stats(arrays["mu"], arrays["sigma"])
  if "pool_3" in arrays:
    return feature_statistics(arrays["pool_3"])
  raise ValueError(
      f"{path!r} has keys {keys}; expected 'mu' and 'sigma' (pytorch-fid / TTUR / save_stats) or 'pool_3' "
      "(score_sde features).")
