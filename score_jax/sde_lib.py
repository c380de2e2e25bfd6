"""Forward SDEs of Score-SDE (Song et al., ICLR 2021) and their discretisations.

Every SDE here is linear in x, so it is described per example by a few scalar functions of t:

    dx = f(t) x dt + g(t) dw                        (forward SDE, eq. 5)
    p_0t(x_t | x_0) = N(x_t; a(t) x_0, s(t)^2 I)    (perturbation kernel)

The maths is written for ONE example (``x`` of any shape, ``t`` a scalar) in the ``*_one`` methods and
batched with ``jax.vmap`` in the public methods, which take ``x`` with the batch first (``[B, ...]``) and
``t`` of shape ``[B]``. SDE objects are frozen dataclasses (hashable, so they can be closed over or passed
as static arguments to ``jax.jit``); their discrete tables (SMLD sigmas, DDPM betas/alphas) are float32
numpy constants computed once, exactly as the original float32 PyTorch code computes them.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import validation

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = ["SDE", "VESDE", "VPSDE", "subVPSDE", "ReverseSDE", "get_sde", "timestep_index", "torch_linspace"]


def torch_linspace(start: float, stop: float, num: int) -> np.ndarray:
  """float32 ``linspace`` computed the way ``torch.linspace`` does on CPU.

  torch rounds ``start``, ``stop`` and ``step = (stop - start) / (num - 1)`` to float32, then fills the
  first half as ``start + i * step`` and the second half as ``stop - (num - 1 - i) * step`` with a fused
  multiply-add (one rounding, reproduced here by computing in float64). Matching it keeps the discrete
  tables and sampler time grids bit-identical to the original, which matters wherever a float32 time is
  truncated to an integer index.
  """
  if num == 1:
    return np.array([start], np.float32)
  start32, stop32 = np.float32(start), np.float32(stop)
  step = np.float64((stop32 - start32) / np.float32(num - 1))
  i = np.arange(num, dtype=np.float64)
  first = np.float64(start32) + step * i
  second = np.float64(stop32) - step * (num - 1 - i)
  return np.where(i < num // 2, first, second).astype(np.float32)


def timestep_index(t: Array, N: int, T: float) -> Array:
  """Discrete index ``floor(t * (N - 1) / T)`` used by the SMLD/DDPM discretisations (float32, truncated)."""
  return (t * (N - 1) / T).astype(jnp.int32)


def _check_positive_int(name: str, value) -> None:
  if not validation.is_int(value, 1):
    raise ValueError(f"{name} must be a positive integer number of discretisation steps, got {value!r} "
                     "(model.num_scales in a config).")


def _check_range(cls: str, low_name: str, low: float, high_name: str, high: float) -> None:
  if not (np.isfinite(low) and np.isfinite(high)):
    raise ValueError(f"{cls}: {low_name}={low!r} and {high_name}={high!r} must be finite numbers.")
  if low <= 0:
    raise ValueError(f"{cls}: {low_name} must be > 0, got {low!r}.")
  if high <= low:
    raise ValueError(f"{cls}: expected {low_name} < {high_name}, got {low_name}={low!r}, {high_name}={high!r}.")


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


class SDE(abc.ABC):
  """Base class: a linear forward SDE with ``N`` discretisation steps on ``[0, T]``.

  Subclasses declare their parameters (and ``N``) as dataclass fields, so that positional construction
  ``VESDE(sigma_min, sigma_max, N)`` works as in the original.
  """

  N: int  # set by subclasses (a dataclass field there)

  @property
  def T(self) -> float:
    """End time of the SDE."""
    return 1.0

  # ---- the maths for one example (x: any shape, t: scalar) --------------------------------------------
  @abc.abstractmethod
  def sde_one(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Drift ``f(x, t)`` (shape of x) and scalar diffusion ``g(t)`` of one example."""

  @abc.abstractmethod
  def marginal_one(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Mean ``a(t) x`` and scalar std ``s(t)`` of the perturbation kernel ``p_0t(. | x)``."""

  @abc.abstractmethod
  def prior_std(self) -> float:
    """Standard deviation of the Gaussian prior ``p_T``."""

  def prior_logp_one(self, z: Array) -> Array:
    """log N(z; 0, prior_std^2 I) of one example."""
    D = z.size
    var = self.prior_std() ** 2
    return -0.5 * D * math.log(2 * math.pi * var) - jnp.sum(z**2) / (2 * var)

  def noise_to_signal(self, t: Array) -> Array:
    """``sigma(t) = s(t) / a(t)``: the noise level of ``x / a(t)``, EDM's sigma (Karras et al. 2022, eq. 4).

    In the variable ``x / a(t)`` every SDE here is variance exploding with noise level ``sigma(t)``; the
    fast samplers step in this variable, and ``lambda(t) = -log sigma(t)`` is DPM-Solver's half log-SNR.
    """
    a, s = self.marginal_one(jnp.ones_like(t), t)
    return s / a

  @abc.abstractmethod
  def time_of_noise_to_signal(self, sigma: Array) -> Array:
    """The inverse of :meth:`noise_to_signal`: the time ``t`` at which ``s(t) / a(t) = sigma`` (closed form)."""

  def discretize_one(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Euler-Maruyama discretisation ``x_{i+1} = x_i + f_i + G_i z_i`` with ``dt = T / N``."""
    dt = 1.0 / self.N
    drift, diffusion = self.sde_one(x, t)
    return drift * dt, diffusion * math.sqrt(dt)

  # ---- batched public API (batch first) -----------------------------------------------------------------
  def check_t(self, x: Array, t: Array) -> None:
    """Raise ValueError if ``t`` is not a ``[B]`` vector in ``[0, T]`` matching ``x``'s batch."""
    x_shape, t_shape = jnp.shape(x), jnp.shape(t)
    if len(x_shape) < 1:
      raise ValueError(f"x must have a leading batch dimension, got shape {x_shape}.")
    if t_shape != (x_shape[0],):
      raise ValueError(
          f"t must have shape [B] = ({x_shape[0]},) to match x of shape {x_shape}, got shape {t_shape}.")
    if _is_concrete(t):
      t_np = np.asarray(t)
      if np.any(~np.isfinite(t_np)) or np.any(t_np < 0) or np.any(t_np > self.T):
        bad = t_np[(~np.isfinite(t_np)) | (t_np < 0) | (t_np > self.T)]
        raise ValueError(f"t must lie in [0, T] = [0, {self.T}], got values {bad[:4].tolist()}.")

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Drift ``[B, ...]`` and diffusion ``[B]`` of the forward SDE."""
    self.check_t(x, t)
    return jax.vmap(self.sde_one)(x, t)

  def marginal_prob(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Mean ``[B, ...]`` and std ``[B]`` of ``p_0t(x_t | x_0 = x)``."""
    self.check_t(x, t)
    return jax.vmap(self.marginal_one)(x, t)

  def prior_sampling(self, key: Array, shape) -> Array:
    """A sample of ``shape`` from the prior ``N(0, prior_std^2 I)``."""
    return jax.random.normal(key, tuple(shape)) * self.prior_std()

  def prior_logp(self, z: Array) -> Array:
    """Log-density ``[B]`` of the prior at ``z``."""
    return jax.vmap(self.prior_logp_one)(z)

  def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
    """``(f [B, ...], G [B])`` of the discrete forward process at time ``t``."""
    self.check_t(x, t)
    return jax.vmap(self.discretize_one)(x, t)

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> "ReverseSDE":
    """The reverse-time SDE (eq. 6) or, with ``probability_flow``, the probability-flow ODE (eq. 13)."""
    return ReverseSDE(self, score_fn, probability_flow)


def _reverse_drift(f: Array, g: Array, score: Array, weight: float) -> Array:
  """Reverse drift ``f - w g^2 score`` of one example; w = 1 (eq. 6) or 1/2 (eq. 13)."""
  return f - weight * g**2 * score


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
  """Reverse-time SDE / probability-flow ODE of ``forward`` for a batched ``score_fn(x, t)``.

  ``sde`` integrates backwards in time: a step of size ``dt < 0`` is ``x + drift * dt + diffusion sqrt(-dt) z``.
  ``discretize`` gives the reverse of the forward discretisation: ``x_{i-1} = x_i - rev_f + rev_G z``.
  """

  forward: SDE
  score_fn: ScoreFn
  probability_flow: bool = False

  @property
  def N(self) -> int:
    return self.forward.N

  @property
  def T(self) -> float:
    return self.forward.T

  @property
  def _weight(self) -> float:
    return 0.5 if self.probability_flow else 1.0

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """Drift ``[B, ...]`` and diffusion ``[B]`` (zeros for the probability-flow ODE)."""
    f, g = self.forward.sde(x, t)
    score = self.score_fn(x, t)
    drift = jax.vmap(_reverse_drift, in_axes=(0, 0, 0, None))(f, g, score, self._weight)
    return drift, jnp.zeros_like(g) if self.probability_flow else g

  def discretize(self, x: Array, t: Array) -> tuple[Array, Array]:
    """``(rev_f [B, ...], rev_G [B])``: ``rev_f = f - w G^2 score``; ``rev_G = G`` (or 0 for the ODE)."""
    f, G = self.forward.discretize(x, t)
    score = self.score_fn(x, t)
    rev_f = jax.vmap(_reverse_drift, in_axes=(0, 0, 0, None))(f, G, score, self._weight)
    return rev_f, jnp.zeros_like(G) if self.probability_flow else G


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
  """Variance-exploding SDE (eq. 9): ``dx = sqrt(d[sigma^2(t)]/dt) dw``, ``sigma(t) = smin (smax/smin)^t``.

  Its discrete counterpart is SMLD/NCSN with geometric noise levels ``discrete_sigmas``.
  """

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  N: int = 1000

  def __post_init__(self):
    _check_range("VESDE", "sigma_min", self.sigma_min, "sigma_max", self.sigma_max)
    _check_positive_int(f"{type(self).__name__}.N", self.N)
    log_sigmas = torch_linspace(math.log(self.sigma_min), math.log(self.sigma_max), self.N)
    # exp in float64, rounded once: correctly rounded float32 (torch's exp is within 1 ulp of this).
    sigmas = np.exp(log_sigmas.astype(np.float64)).astype(np.float32)
    object.__setattr__(self, "discrete_sigmas", sigmas)

  def sigma(self, t: Array) -> Array:
    """Noise level ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``."""
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

  def sde_one(self, x, t):
    g = self.sigma(t) * math.sqrt(2 * (math.log(self.sigma_max) - math.log(self.sigma_min)))
    return jnp.zeros_like(x), g

  def marginal_one(self, x, t):
    return x, self.sigma(t)

  def prior_std(self) -> float:
    return self.sigma_max

  def time_of_noise_to_signal(self, sigma):
    return jnp.log(sigma / self.sigma_min) / math.log(self.sigma_max / self.sigma_min)

  def discretize_one(self, x, t):
    """SMLD discretisation: ``f = 0``, ``G = sqrt(sigma_i^2 - sigma_{i-1}^2)`` (sigma_{-1} = 0)."""
    i = timestep_index(t, self.N, self.T)
    sigmas = jnp.asarray(self.discrete_sigmas)
    sigma = sigmas[i]
    adjacent_sigma = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
    return jnp.zeros_like(x), jnp.sqrt(sigma**2 - adjacent_sigma**2)


def _ddpm_tables(beta_min: float, beta_max: float, N: int) -> dict[str, np.ndarray]:
  """DDPM's discrete betas/alphas in float32, as the original computes them (``beta_i = beta(t_i) / N``)."""
  betas = torch_linspace(beta_min / N, beta_max / N, N)
  alphas = (np.float32(1.0) - betas).astype(np.float32)
  alphas_cumprod = np.cumprod(alphas, dtype=np.float32)
  # beta_max / N > 1 makes some alphas negative (NaN square roots), as in the original; the PC sampler
  # then fails loudly downstream, so the tables are left as they are.
  with np.errstate(invalid="ignore"):
    sqrt_alphas_cumprod = np.sqrt(alphas_cumprod).astype(np.float32)
  return dict(
      discrete_betas=betas,
      alphas=alphas,
      alphas_cumprod=alphas_cumprod,
      sqrt_alphas_cumprod=sqrt_alphas_cumprod,
      sqrt_1m_alphas_cumprod=np.sqrt(np.float32(1.0) - alphas_cumprod).astype(np.float32),
  )


@dataclasses.dataclass(frozen=True)
class _BetaSDE(SDE):
  """Shared part of VP and sub-VP: linear ``beta(t) = beta_min + t (beta_max - beta_min)``."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  N: int = 1000

  def __post_init__(self):
    _check_range(type(self).__name__, "beta_min", self.beta_min, "beta_max", self.beta_max)
    _check_positive_int(f"{type(self).__name__}.N", self.N)
    for name, table in _ddpm_tables(self.beta_min, self.beta_max, self.N).items():
      object.__setattr__(self, name, table)

  def beta(self, t: Array) -> Array:
    """``beta(t) = beta_min + t (beta_max - beta_min)``."""
    return self.beta_min + t * (self.beta_max - self.beta_min)

  def log_mean_coeff(self, t: Array) -> Array:
    """``log a(t) = -1/2 int_0^t beta(s) ds``."""
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def prior_std(self) -> float:
    return 1.0

  def _time_of_log_mean_coeff(self, neg_log_a: Array) -> Array:
    """Solve ``-log a(t) = beta_min t / 2 + (beta_max - beta_min) t^2 / 4 = L`` for ``t >= 0`` (rationalised
    root, exact when beta_max = beta_min)."""
    delta = self.beta_max - self.beta_min
    return 4 * neg_log_a / (self.beta_min + jnp.sqrt(self.beta_min**2 + 4 * delta * neg_log_a))

  def discrete_alpha(self, t: Array) -> Array:
    """The DDPM ``alpha_i = 1 - beta_i`` at the discrete index of ``t`` (used by the Langevin correctors)."""
    return jnp.asarray(self.alphas)[timestep_index(t, self.N, self.T)]


@dataclasses.dataclass(frozen=True)
class VPSDE(_BetaSDE):
  """Variance-preserving SDE (eq. 11): ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw``; discrete: DDPM."""

  def sde_one(self, x, t):
    beta_t = self.beta(t)
    return -0.5 * beta_t * x, jnp.sqrt(beta_t)

  def marginal_one(self, x, t):
    lmc = self.log_mean_coeff(t)
    # std = sqrt(1 - a^2) with -expm1: 1 - exp(2 lmc) cancels in float32 near t = 0 (1.2e-4 off at t = 1e-5)
    return jnp.exp(lmc) * x, jnp.sqrt(-jnp.expm1(2.0 * lmc))

  def time_of_noise_to_signal(self, sigma):
    return self._time_of_log_mean_coeff(0.5 * jnp.log1p(sigma**2))  # sigma^2 = 1 / a^2 - 1

  def discretize_one(self, x, t):
    """DDPM discretisation: ``f = (sqrt(alpha_i) - 1) x``, ``G = sqrt(beta_i)``."""
    i = timestep_index(t, self.N, self.T)
    beta = jnp.asarray(self.discrete_betas)[i]
    alpha = jnp.asarray(self.alphas)[i]
    return jnp.sqrt(alpha) * x - x, jnp.sqrt(beta)


@dataclasses.dataclass(frozen=True)
class subVPSDE(_BetaSDE):
  """sub-VP SDE (eq. 17): ``dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 int_0^t beta))) dw``.

  Its marginal std is ``1 - exp(-int_0^t beta)`` (no square root: the variance is its square). The
  discretisation is the base Euler-Maruyama one, as in the original. Unlike the original, the discrete
  DDPM ``alphas`` of the same beta schedule are defined, so the Langevin correctors work for sub-VP.
  """

  def sde_one(self, x, t):
    beta_t = self.beta(t)
    discount = 1.0 - jnp.exp(-2 * self.beta_min * t - (self.beta_max - self.beta_min) * t**2)
    return -0.5 * beta_t * x, jnp.sqrt(beta_t * discount)

  def marginal_one(self, x, t):
    lmc = self.log_mean_coeff(t)
    return jnp.exp(lmc) * x, -jnp.expm1(2.0 * lmc)  # 1 - a^2 without cancellation near t = 0

  def time_of_noise_to_signal(self, sigma):
    # sigma = (1 - a^2) / a, so a = 2 / (sigma + sqrt(sigma^2 + 4)).
    return self._time_of_log_mean_coeff(jnp.log((sigma + jnp.sqrt(sigma**2 + 4.0)) / 2.0))


SDES = {"vesde": VESDE, "vpsde": VPSDE, "subvpsde": subVPSDE}


def get_sde(name: str, **kwargs) -> SDE:
  """Build an SDE by name (``vesde``, ``vpsde``, ``subvpsde``; case-insensitive)."""
  key = str(name).lower()
  if key not in SDES:
    raise ValueError(f"Unknown SDE {name!r}; expected one of {sorted(SDES)}.")
  return SDES[key](**kwargs)
