"""EDM (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models") in score_jax.

Everything is written in EDM's variables: data ``y``, noisy ``x = y + sigma n`` and the denoiser
``D(x; sigma) ~ E[y | x]`` (sigma ``[B]``, one noise level per example). The pieces:

- :func:`precond_coefficients`: Table 1's preconditionings (VP, VE, EDM) ``c_skip, c_out, c_in, c_noise``
  and :func:`precondition`, the denoiser ``D = c_skip x + c_out F(c_in x, c_noise)`` around a raw network F.
- :func:`loss_sigma` / :func:`loss`: EDM's training losses (VPLoss, VELoss, EDMLoss) per element, with every
  draw explicit; :func:`make_loss_fn` draws them per example from a key.
- :func:`score_from_denoiser` / :func:`denoiser_from_score`: the bridge to score_jax's SDEs. Under any SDE
  here ``x_t = a(t) (y + sigma(t) n)`` with ``sigma(t) = s(t) / a(t)`` (the change of variables of
  :mod:`score_jax.fast_sampling`), so ``score(x_t, t) = (D(x_t / a; sigma) - x_t / a) / (a sigma^2)``
  (Tweedie's formula, EDM eq. 3) and back. Every score_jax sampler can thus run an EDM denoiser, and the
  EDM samplers can run every VE / VP / sub-VP score model.
- :func:`edm_sampler`: Algorithm 2 (stochastic Heun with churn, EDM's ``generate.py:edm_sampler``) and
  :func:`ablation_sampler`: EDM's generalised sampler (solver, discretization, schedule, scaling), which
  contains the original VP and VE probability-flow samplers. Both take the prior draw and every step's
  churn draw explicitly; :func:`edm_sample` draws them per example from a key.
- :func:`guided_denoiser`: classifier-free guidance ``D_uncond + w (D_cond - D_uncond)``.

The samplers' noise levels and coefficients are scalars of the step only, computed once on the host in
float64 (as EDM computes them), so a float32 state sees EDM's schedule exactly; the state, the denoiser
calls and the ``lax.scan`` loop stay on the device. Sampler parameters are therefore Python numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import sde_lib

Array = jax.Array
DenoiseFn = Callable[[Array, Array], Array]

__all__ = [
    "PRECONDS", "LOSSES", "SOLVERS", "DISCRETIZATIONS", "SCHEDULES", "SCALINGS", "PRECOND_DEFAULTS",
    "LOSS_DEFAULTS", "vp_sigma", "vp_sigma_inv", "precond_coefficients", "precondition", "loss_sigma", "loss",
    "make_loss_fn", "score_from_denoiser", "denoiser_from_score", "sde_sigma_range", "edm_time_steps",
    "edm_sampler", "ablation_sampler", "ablation_time_steps", "sampler_nfe", "edm_draws", "edm_sample",
    "guided_denoiser", "guided_score", "drop_labels", "ema_beta", "TRAINING_LOSSES", "split_params",
]

PRECONDS = ("vp", "ve", "edm")
LOSSES = PRECONDS
SOLVERS = ("euler", "heun")
DISCRETIZATIONS = ("vp", "ve", "iddpm", "edm")
SCHEDULES = ("vp", "ve", "linear")
SCALINGS = ("vp", "none")

# EDM's training/networks.py and training/loss.py defaults, by preconditioning / loss kind.
PRECOND_DEFAULTS = {
    "vp": dict(beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5),
    "ve": dict(sigma_min=0.02, sigma_max=100.0),
    "edm": dict(sigma_data=0.5, sigma_min=0.0, sigma_max=float("inf")),
}
LOSS_DEFAULTS = {
    "vp": dict(beta_d=19.9, beta_min=0.1, epsilon_t=1e-5),
    "ve": dict(sigma_min=0.02, sigma_max=100.0),
    "edm": dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5),
}
# EDM's VEPrecond feeds the network log(sigma / 2) (its NCSN++ noise label).
VE_NOISE_LABEL_SCALE = 0.5
# EDMPrecond's noise label is log(sigma) / 4.
EDM_NOISE_LABEL_SCALE = 0.25
MAX_GAMMA = math.sqrt(2.0) - 1.0  # Algorithm 2: gamma_i <= sqrt(2) - 1 keeps t_hat <= sqrt(2) t_i
# training.loss -> the EDM loss and preconditioning kind it trains with (EDM's VPLoss/VPPrecond, ...).
TRAINING_LOSSES = {"edm": "edm", "edm_vp": "vp", "edm_ve": "ve"}


def _params(kind: str, table: dict, params: dict, what: str) -> dict:
  if kind not in table:
    raise ValueError(f"Unknown {what} kind {kind!r}; expected one of {list(table)}.")
  unknown = sorted(set(params) - set(table[kind]))
  if unknown:
    raise ValueError(f"{what} {kind!r} has no parameters {unknown}; expected some of {sorted(table[kind])}.")
  return {**table[kind], **params}


def split_params(kind: str, params: dict) -> tuple[dict, dict]:
  """``(precond params, loss params)`` of ``kind`` from one dict with EDM's names (others are ignored)."""
  _params(kind, PRECOND_DEFAULTS, {}, "preconditioning")
  pick = lambda table: {k: params[k] for k in table[kind] if k in params}
  return pick(PRECOND_DEFAULTS), pick(LOSS_DEFAULTS)


def _per_example(c: Array, x: Array) -> Array:
  """``c [B] * x [B, ...]`` per example."""
  return jax.vmap(jnp.multiply)(c, x)


# ---- preconditioning (EDM Table 1) ---------------------------------------------------------------------

def vp_sigma(t, beta_d: float, beta_min: float):
  """VP noise level ``sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1)`` (EDM Table 1); numpy or jax."""
  xp = jnp if isinstance(t, jax.Array) else np
  return xp.sqrt(xp.expm1(0.5 * beta_d * t**2 + beta_min * t))


def vp_sigma_inv(sigma, beta_d: float, beta_min: float):
  """``t(sigma) = (sqrt(beta_min^2 + 2 beta_d log(1 + sigma^2)) - beta_min) / beta_d`` (EDM Table 1)."""
  xp = jnp if isinstance(sigma, jax.Array) else np
  return (xp.sqrt(beta_min**2 + 2 * beta_d * xp.log1p(sigma**2)) - beta_min) / beta_d


def precond_coefficients(kind: str, sigma: Array, **params) -> tuple[Array, Array, Array, Array]:
  """``(c_skip, c_out, c_in, c_noise)`` of preconditioning ``kind`` at noise levels ``sigma`` (EDM Table 1).

  Args:
    kind: ``'vp'`` (beta_d=19.9, beta_min=0.1, M=1000, epsilon_t=1e-5), ``'ve'`` (sigma_min=0.02,
      sigma_max=100) or ``'edm'`` (sigma_data=0.5); params with EDM's names override the defaults
      (epsilon_t, sigma_min and sigma_max only set the network's noise range, not the coefficients).
    sigma: noise levels, any shape (``[B]`` in use).

  Returns:
    Four arrays of ``sigma``'s shape and dtype.
  """
  p = _params(kind, PRECOND_DEFAULTS, params, "preconditioning")
  sigma = jnp.asarray(sigma)
  if not jnp.issubdtype(sigma.dtype, jnp.floating):
    sigma = sigma.astype(jnp.float32)
  one = jnp.ones_like(sigma)
  if kind == "vp":
    c_in = jax.lax.rsqrt(sigma**2 + 1)
    c_noise = (p["M"] - 1) * vp_sigma_inv(sigma, p["beta_d"], p["beta_min"])
    return one, -sigma, c_in, c_noise
  if kind == "ve":
    return one, sigma, one, jnp.log(VE_NOISE_LABEL_SCALE * sigma)
  sd = p["sigma_data"]
  c_skip = sd**2 / (sigma**2 + sd**2)
  c_out = sigma * sd * jax.lax.rsqrt(sigma**2 + sd**2)
  c_in = jax.lax.rsqrt(sd**2 + sigma**2)
  return c_skip, c_out, c_in, EDM_NOISE_LABEL_SCALE * jnp.log(sigma)


def precondition(kind: str, model_fn: Callable[[Array, Array], Array], **params) -> DenoiseFn:
  """The denoiser ``D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)`` (EDM eq. 7) around a raw network.

  Args:
    kind, params: as :func:`precond_coefficients`.
    model_fn: the raw network ``F(x_in [B, ...], c_noise [B]) -> [B, ...]``.

  Returns:
    ``denoise_fn(x [B, ...], sigma [B]) -> D [B, ...]``.
  """
  _params(kind, PRECOND_DEFAULTS, params, "preconditioning")

  def denoise_fn(x, sigma):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])
    c_skip, c_out, c_in, c_noise = precond_coefficients(kind, sigma, **params)
    F = model_fn(_per_example(c_in, x), c_noise)
    return _per_example(c_skip, x) + _per_example(c_out, F.astype(x.dtype))

  return denoise_fn


# ---- losses (EDM training/loss.py) --------------------------------------------------------------------

def loss_sigma(kind: str, u: Array, **params) -> tuple[Array, Array]:
  """Training noise levels and loss weights ``(sigma, weight)`` from the per-example draws ``u``.

  - vp: ``u`` uniform in [0, 1), ``t = 1 + u (epsilon_t - 1)``, ``sigma = sigma_vp(t)``, weight ``1 / sigma^2``.
  - ve: ``u`` uniform, ``sigma = sigma_min (sigma_max / sigma_min)^u``, weight ``1 / sigma^2``.
  - edm: ``u`` standard normal, ``ln sigma = P_mean + P_std u``, weight
    ``(sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` (EDM eq. 8 with Table 1's lambda).
  """
  p = _params(kind, LOSS_DEFAULTS, params, "loss")
  u = jnp.asarray(u)
  if kind == "vp":
    t = 1 + u * (p["epsilon_t"] - 1)
    sigma = vp_sigma(t, p["beta_d"], p["beta_min"])
    return sigma, 1 / sigma**2
  if kind == "ve":
    sigma = p["sigma_min"] * (p["sigma_max"] / p["sigma_min"]) ** u
    return sigma, 1 / sigma**2
  sigma = jnp.exp(u * p["P_std"] + p["P_mean"])
  sd = p["sigma_data"]
  return sigma, (sigma**2 + sd**2) / (sigma * sd) ** 2


def loss(kind: str, denoise_fn: DenoiseFn, y: Array, u: Array, noise: Array, **params) -> Array:
  """EDM's loss ``weight(sigma) (D(y + sigma n; sigma) - y)^2`` per element (no reduction), as EDM returns it.

  Args:
    kind: ``'vp'``, ``'ve'`` or ``'edm'`` (see :func:`loss_sigma` for the draws and params).
    denoise_fn: ``D(x [B, ...], sigma [B]) -> [B, ...]``.
    y: data ``[B, ...]``.
    u: per-example draws ``[B]``.
    noise: standard normal of ``y``'s shape.

  Returns:
    The per-element loss, of ``y``'s shape.
  """
  y, noise = jnp.asarray(y), jnp.asarray(noise)
  if noise.shape != y.shape or jnp.shape(u) != y.shape[:1]:
    raise ValueError(f"expected y [B, ...], u [B] and noise of y's shape; got {y.shape}, {jnp.shape(u)}, "
                     f"{noise.shape}.")
  sigma, weight = loss_sigma(kind, jnp.asarray(u, y.dtype), **params)
  D = denoise_fn(y + _per_example(sigma, noise), sigma)
  return _per_example(weight, (D - y) ** 2)


def make_loss_fn(kind: str, **params):
  """``loss_fn(key, denoise_fn, y [B, ...]) -> per-element loss``, drawing ``u`` and ``noise`` per example.

  Example ``b`` draws from ``fold_in(key, b)`` (streams 0: ``u``, 1: ``noise``).
  """
  _params(kind, LOSS_DEFAULTS, params, "loss")

  def loss_fn(key, denoise_fn, y):
    keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(jnp.arange(y.shape[0]))
    draw_u = jax.random.normal if kind == "edm" else jax.random.uniform
    u = jax.vmap(lambda k: draw_u(jax.random.fold_in(k, 0), (), y.dtype))(keys)
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), y.shape[1:], y.dtype))(keys)
    return loss(kind, denoise_fn, y, u, noise, **params)

  return loss_fn


# ---- the bridge to score_jax's SDEs --------------------------------------------------------------------

def _sde_scales(sde: sde_lib.SDE, t: Array) -> tuple[Array, Array]:
  """``(a(t), sigma(t) = s(t) / a(t))`` per example for ``t [B]``."""
  a, s = jax.vmap(lambda ti: sde.marginal_one(jnp.ones((), ti.dtype), ti))(t)
  return a, s / a


def score_from_denoiser(sde: sde_lib.SDE, denoise_fn: DenoiseFn):
  """An EDM denoiser as a score model of ``sde``: ``score(x, t) = (D(x / a; sigma) - x / a) / (a sigma^2)``.

  ``x_t = a(t) (y + sigma(t) n)`` under every score_jax SDE, so this is Tweedie's formula (EDM eq. 3) in
  ``x_t``. Any SDE serves (the sampler's time grid decides which noise levels are visited); for a model
  trained with EDM's losses a VE SDE over the training range is the natural one.

  Returns:
    ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
  """
  def score_fn(x, t):
    a, sigma = _sde_scales(sde, jnp.asarray(t, x.dtype))
    y = _per_example(1 / a, x)
    return _per_example(1 / (a * sigma**2), denoise_fn(y, sigma) - y)
  return score_fn


def denoiser_from_score(sde: sde_lib.SDE, score_fn) -> DenoiseFn:
  """A score model of ``sde`` as an EDM denoiser: ``D(y; sigma) = y + sigma^2 a(t) score(a(t) y, t)``
  at ``t = t(sigma)`` (:meth:`score_jax.sde_lib.SDE.time_of_noise_to_signal`, the inverse of ``s / a``).

  Noise levels outside the SDE's range give times outside ``[0, T]``; clamp the sampler's range to
  :func:`sde_sigma_range` (EDM clamps to its network's ``sigma_min`` / ``sigma_max`` the same way).

  Returns:
    ``denoise_fn(y [B, ...], sigma [B]) -> [B, ...]``.
  """
  def denoise_fn(y, sigma):
    sigma = jnp.broadcast_to(jnp.asarray(sigma, y.dtype), y.shape[:1])
    t = sde.time_of_noise_to_signal(sigma)
    a, _ = _sde_scales(sde, t)
    return y + _per_example(sigma**2 * a, score_fn(_per_example(a, y), t))
  return denoise_fn


def sde_sigma_range(sde: sde_lib.SDE, eps: float) -> tuple[float, float]:
  """The noise levels ``(sigma(eps), sigma(T))`` a score model of ``sde`` was trained on (Python floats)."""
  with jax.ensure_compile_time_eval():  # concrete also when called while a sampler is being traced
    kernels = [sde.marginal_one(jnp.ones(()), jnp.asarray(t, jnp.float32)) for t in (eps, sde.T)]
    return tuple(float(s) / float(a) for a, s in kernels)


# ---- the samplers (EDM generate.py) --------------------------------------------------------------------

def _check_sampler_args(latents, churn_noise, num_steps):
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}.")
  if jnp.ndim(latents) < 1:
    raise ValueError(f"latents must be [B, ...], got shape {jnp.shape(latents)}.")
  if jnp.shape(churn_noise) != (int(num_steps),) + jnp.shape(latents):
    raise ValueError(f"churn_noise must have shape [num_steps, *latents.shape] = "
                     f"{(int(num_steps),) + tuple(jnp.shape(latents))}, got {jnp.shape(churn_noise)}.")


def _gammas(sigmas: np.ndarray, num_steps: int, S_churn, S_min, S_max) -> np.ndarray:
  """Algorithm 2's ``gamma_i = min(S_churn / N, sqrt(2) - 1)`` where ``S_min <= sigma_i <= S_max``, else 0."""
  gamma = min(S_churn / num_steps, MAX_GAMMA)
  return np.where((sigmas >= S_min) & (sigmas <= S_max), gamma, 0.0)


def edm_time_steps(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   rho: float = 7.0) -> np.ndarray:
  """EDM eq. 5: ``t_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
  ``i < N``, and ``t_N = 0``; float64 ``[N + 1]``."""
  i = np.arange(num_steps, dtype=np.float64)
  frac = i / max(num_steps - 1, 1)
  t = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  return np.concatenate([t, [0.0]])


def _broadcast_sigma(sigma, x):
  return jnp.full(x.shape[:1], sigma, x.dtype)


def edm_sampler(denoise_fn: DenoiseFn, latents: Array, churn_noise: Array, *, num_steps: int = 18,
                sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, S_churn: float = 0.0,
                S_min: float = 0.0, S_max: float = float("inf"), S_noise: float = 1.0) -> Array:
  """EDM's stochastic sampler (Algorithm 2; EDM ``generate.py:edm_sampler``), ``2 N - 1`` denoiser calls.

  Step i: churn ``t_hat = (1 + gamma_i) t_i``, ``x_hat = x_i + sqrt(t_hat^2 - t_i^2) S_noise eps_i``; Euler
  from ``t_hat`` to ``t_{i+1}`` on ``dx/dt = (x - D(x; t)) / t``, then the trapezoidal (Heun) correction
  except on the last step, to ``t_N = 0``.

  Args:
    denoise_fn: ``D(x [B, ...], sigma [B]) -> [B, ...]``.
    latents: the standard-normal prior draw ``[B, ...]`` (multiplied by ``t_0`` here).
    churn_noise: ``[num_steps, B, ...]``, standard normal; step i uses index i (drawn at every step, also
      where ``gamma_i = 0``, as EDM does).
    num_steps, sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise: EDM's, Python numbers.

  Returns:
    Samples ``x_N`` of ``latents``' shape and dtype.
  """
  _check_sampler_args(latents, churn_noise, num_steps)
  t = edm_time_steps(num_steps, sigma_min, sigma_max, rho)
  gamma = _gammas(t[:-1], num_steps, S_churn, S_min, S_max)
  t_hat = t[:-1] + gamma * t[:-1]
  churn = np.sqrt(t_hat**2 - t[:-1] ** 2) * S_noise
  dtype = latents.dtype
  as_dev = lambda a: jnp.asarray(a, dtype)

  def churn_and_euler(x, t_hat, t_next, churn, eps):
    x_hat = x + churn * eps
    d = (x_hat - denoise_fn(x_hat, _broadcast_sigma(t_hat, x_hat))) / t_hat
    return x_hat, d, x_hat + (t_next - t_hat) * d

  def heun_step(x, inp):
    t_hat, t_next, churn, eps = inp
    x_hat, d, x_next = churn_and_euler(x, t_hat, t_next, churn, eps)
    d_next = (x_next - denoise_fn(x_next, _broadcast_sigma(t_next, x_next))) / t_next
    return x_hat + (t_next - t_hat) * 0.5 * (d + d_next), None

  x = latents * as_dev(t[0])
  n = num_steps - 1  # Heun steps; the last step (to sigma = 0) is Euler
  x, _ = jax.lax.scan(heun_step, x, (as_dev(t_hat[:n]), as_dev(t[1:n + 1]), as_dev(churn[:n]), churn_noise[:n]))
  return churn_and_euler(x, as_dev(t_hat[n]), as_dev(t[n + 1]), as_dev(churn[n]), churn_noise[n])[2]


def _iddpm_sigmas(M: int, C_1: float, C_2: float) -> np.ndarray:
  """iDDPM's noise levels ``u_j``, ``j = 0..M`` (``u_M = 0``; EDM Table 1), with ``alpha_bar`` in float32 as EDM."""
  j = np.arange(M + 1)
  alpha_bar = np.sin(np.float32(0.5 * np.pi) * j.astype(np.float32) / np.float32(M) / np.float32(C_2 + 1)) ** 2
  ratio = np.maximum(alpha_bar[:-1] / alpha_bar[1:], np.float32(C_1)).astype(np.float64)  # [M], j - 1 over j
  u = np.zeros(M + 1)
  for k in range(M, 0, -1):
    u[k - 1] = np.sqrt((u[k] ** 2 + 1) / ratio[k - 1] - 1)
  return u


@dataclasses.dataclass(frozen=True)
class _Schedule:
  """sigma(t), sigma'(t), sigma^-1 and the scaling s(t), s'(t) of :func:`ablation_sampler`, numpy float64."""

  schedule: str
  scaling: str
  beta_d: float
  beta_min: float

  def sigma(self, t):
    if self.schedule == "vp":
      return vp_sigma(t, self.beta_d, self.beta_min)
    return np.sqrt(t) if self.schedule == "ve" else t

  def sigma_deriv(self, t):
    if self.schedule == "vp":
      sigma = self.sigma(t)
      return 0.5 * (self.beta_min + self.beta_d * t) * (sigma + 1 / sigma)
    return 0.5 / np.sqrt(t) if self.schedule == "ve" else np.ones_like(t)

  def sigma_inv(self, sigma):
    if self.schedule == "vp":
      return (np.sqrt(self.beta_min**2 + 2 * self.beta_d * np.log(sigma**2 + 1)) - self.beta_min) / self.beta_d
    return sigma**2 if self.schedule == "ve" else sigma

  def s(self, t):
    return 1 / np.sqrt(1 + self.sigma(t) ** 2) if self.scaling == "vp" else np.ones_like(t)

  def s_deriv(self, t):
    if self.scaling == "vp":
      return -self.sigma(t) * self.sigma_deriv(t) * self.s(t) ** 3
    return np.zeros_like(t)

  def ode_coefficients(self, t):
    """``(A, B, 1 / s, sigma)`` with ``dx/dt = A x - B D(x / s; sigma)`` (EDM eq. 4 with s(t))."""
    sigma, sd, s, s_d = self.sigma(t), self.sigma_deriv(t), self.s(t), self.s_deriv(t)
    return sd / sigma + s_d / s, sd * s / sigma, 1 / s, sigma


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"Unknown {name} {value!r}; expected one of {list(choices)}.")


def ablation_time_steps(num_steps: int = 18, sigma_min: float | None = None, sigma_max: float | None = None,
                        rho: float = 7.0, discretization: str = "edm", schedule: str = "linear",
                        epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008, M: int = 1000,
                        net_sigma_min: float = 0.0, net_sigma_max: float = float("inf")):
  """The time steps of :func:`ablation_sampler` (EDM generate.py): ``(t_steps [N + 1], schedule)``.

  ``t_steps`` is in the schedule's time (vp: 1 .. epsilon_s, then 0; ve: sigma^2; linear: sigma), float64.
  The default range follows ``discretization``; it is clamped to ``[net_sigma_min, net_sigma_max]``.
  """
  _check_choice("discretization", discretization, DISCRETIZATIONS)
  _check_choice("schedule", schedule, SCHEDULES)
  vp_def = PRECOND_DEFAULTS["vp"]
  if sigma_min is None:
    sigma_min = {"vp": float(vp_sigma(np.float64(epsilon_s), vp_def["beta_d"], vp_def["beta_min"])), "ve": 0.02,
                 "iddpm": 0.002, "edm": 0.002}[discretization]
  if sigma_max is None:
    sigma_max = {"vp": float(vp_sigma(np.float64(1.0), vp_def["beta_d"], vp_def["beta_min"])), "ve": 100.0,
                 "iddpm": 81.0, "edm": 80.0}[discretization]
  sigma_min, sigma_max = max(sigma_min, net_sigma_min), min(sigma_max, net_sigma_max)
  # The VP betas that put sigma(epsilon_s) = sigma_min and sigma(1) = sigma_max.
  beta_d = 2 * (np.log(sigma_min**2 + 1) / epsilon_s - np.log(sigma_max**2 + 1)) / (epsilon_s - 1)
  beta_min = np.log(sigma_max**2 + 1) - 0.5 * beta_d
  i = np.arange(num_steps, dtype=np.float64)
  frac = i / max(num_steps - 1, 1)
  if discretization == "vp":
    sigmas = vp_sigma(1 + frac * (epsilon_s - 1), beta_d, beta_min)
  elif discretization == "ve":
    sigmas = np.sqrt(sigma_max**2 * (sigma_min**2 / sigma_max**2) ** frac)
  elif discretization == "iddpm":
    u = _iddpm_sigmas(M, C_1, C_2)
    kept = u[(u >= sigma_min) & (u <= sigma_max)]
    sigmas = kept[np.round((len(kept) - 1) / max(num_steps - 1, 1) * i).astype(np.int64)]
  else:
    sigmas = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  sched = _Schedule(schedule, "none", beta_d, beta_min)
  return np.concatenate([sched.sigma_inv(sigmas), [0.0]]), sched


def sampler_nfe(num_steps: int, solver: str = "heun") -> int:
  """Denoiser calls of :func:`edm_sampler` / :func:`ablation_sampler`: Heun ``2 N - 1``, Euler ``N``."""
  return 2 * num_steps - 1 if solver == "heun" else num_steps


def ablation_sampler(denoise_fn: DenoiseFn, latents: Array, churn_noise: Array, *, num_steps: int = 18,
                     sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7.0,
                     solver: str = "heun", discretization: str = "edm", schedule: str = "linear",
                     scaling: str = "none", epsilon_s: float = 1e-3, C_1: float = 0.001, C_2: float = 0.008,
                     M: int = 1000, alpha: float = 1.0, S_churn: float = 0.0, S_min: float = 0.0,
                     S_max: float = float("inf"), S_noise: float = 1.0, net_sigma_min: float = 0.0,
                     net_sigma_max: float = float("inf")) -> Array:
  """EDM's generalised sampler (``generate.py:ablation_sampler``; EDM section 3 and Table 1).

  Integrates ``dx/dt = (sigma'/sigma + s'/s) x - sigma' s / sigma D(x / s; sigma)`` (EDM eq. 4) from
  ``t_0`` to 0 with Euler or the generalised second-order method (``alpha``; Heun at 1), the last step
  Euler, with Algorithm 2's churn. ``solver='euler', discretization='vp', schedule='vp', scaling='vp'`` is
  the original VP probability-flow sampler; ``'euler', 've', 've', 'none'`` the original VE one.

  Args:
    denoise_fn: ``D(x [B, ...], sigma [B]) -> [B, ...]``.
    latents: standard-normal prior draw ``[B, ...]`` (scaled by ``sigma(t_0) s(t_0)`` here).
    churn_noise: ``[num_steps, B, ...]`` standard normal, step i at index i.
    The rest: EDM's names and defaults (see :func:`ablation_time_steps`); ``net_sigma_min`` /
      ``net_sigma_max`` are the denoiser's noise range, which EDM reads from the network.

  Returns:
    Samples ``x_N`` of ``latents``' shape and dtype.
  """
  _check_sampler_args(latents, churn_noise, num_steps)
  _check_choice("solver", solver, SOLVERS)
  _check_choice("scaling", scaling, SCALINGS)
  if not alpha > 0:
    raise ValueError(f"alpha must be > 0, got {alpha!r}.")
  t_steps, sched = ablation_time_steps(num_steps, sigma_min, sigma_max, rho, discretization, schedule, epsilon_s,
                                       C_1, C_2, M, net_sigma_min, net_sigma_max)
  sched = dataclasses.replace(sched, scaling=scaling)
  t_cur, t_next = t_steps[:-1], t_steps[1:]
  sigma_cur = sched.sigma(t_cur)
  gamma = _gammas(sigma_cur, num_steps, S_churn, S_min, S_max)
  t_hat = sched.sigma_inv(sigma_cur + gamma * sigma_cur)
  sigma_hat = sched.sigma(t_hat)
  ratio = sched.s(t_hat) / sched.s(t_cur)
  churn = np.sqrt(np.maximum(sigma_hat**2 - sigma_cur**2, 0)) * sched.s(t_hat) * S_noise
  h = t_next - t_hat
  n = num_steps - 1 if solver == "heun" else num_steps  # steps with the second-order correction: n or none
  t_prime = (t_hat + alpha * h)[:n]
  coef_hat = sched.ode_coefficients(t_hat)
  coef_prime = sched.ode_coefficients(t_prime) if solver == "heun" else None
  dtype = latents.dtype
  as_dev = lambda a: jnp.asarray(a, dtype)

  def slope(x, A, B, inv_s, sigma):
    return A * x - B * denoise_fn(x * inv_s, _broadcast_sigma(sigma, x))

  def churn_and_slope(x, ratio, churn, eps, coef):
    x_hat = ratio * x + churn * eps
    return x_hat, slope(x_hat, *coef)

  def euler_step(x, inp):
    ratio, churn, eps, h, coef = inp
    x_hat, d = churn_and_slope(x, ratio, churn, eps, coef)
    return x_hat + h * d, None

  def second_order_step(x, inp):
    ratio, churn, eps, h, coef, coef_p = inp
    x_hat, d = churn_and_slope(x, ratio, churn, eps, coef)
    d_prime = slope(x_hat + alpha * h * d, *coef_p)
    return x_hat + h * ((1 - 1 / (2 * alpha)) * d + 1 / (2 * alpha) * d_prime), None

  per_step = lambda sl: (as_dev(ratio[sl]), as_dev(churn[sl]), churn_noise[sl], as_dev(h[sl]),
                         tuple(as_dev(c[sl]) for c in coef_hat))
  x = latents * as_dev(sched.sigma(t_steps[0]) * sched.s(t_steps[0]))
  if solver == "euler":
    x, _ = jax.lax.scan(euler_step, x, per_step(slice(0, num_steps)))
    return x
  x, _ = jax.lax.scan(second_order_step, x, per_step(slice(0, n)) + (tuple(as_dev(c) for c in coef_prime),))
  last = jax.tree_util.tree_map(lambda a: a[0], per_step(slice(n, n + 1)))
  return euler_step(x, last)[0]


# ---- key-drawing wrappers -------------------------------------------------------------------------------

# Noise streams of an example's key: 0 the prior (as score_jax.sampling's prior draw), 5 the churn.
_PRIOR_STREAM, _CHURN_STREAM = 0, 5


def edm_draws(key: Array, shape, num_steps: int, sample_offset=0) -> tuple[Array, Array]:
  """``(latents [B, ...], churn_noise [num_steps, B, ...])`` drawn per example from ``fold_in(key, offset + b)``.

  The latents are the standard-normal prior draw of :func:`score_jax.sampling.pc_sample` and the fast
  samplers (``fold_in(fold_in(k_b, 0), 0)``), so the samplers start from the same noise; churn step i uses
  ``fold_in(fold_in(k_b, i + 1), 5)``. A sample does not depend on the batch it is drawn in.
  """
  return _edm_draws(key, tuple(int(s) for s in shape), int(num_steps), sample_offset)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _edm_draws(key, shape, num_steps, sample_offset):
  keys = jax.vmap(lambda b: jax.random.fold_in(key, b))(sample_offset + jnp.arange(shape[0]))
  draw = lambda k, step, stream: jax.random.normal(jax.random.fold_in(jax.random.fold_in(k, step), stream), shape[1:])
  latents = jax.vmap(lambda k: draw(k, 0, _PRIOR_STREAM))(keys)
  steps = jnp.arange(num_steps)
  churn = jax.vmap(lambda k: jax.vmap(lambda i: draw(k, i + 1, _CHURN_STREAM))(steps), out_axes=1)(keys)
  return latents, churn


def edm_sample(key: Array, denoise_fn: DenoiseFn, shape, *, ablation: bool = False, sample_offset=0,
               **params) -> Array:
  """:func:`edm_sampler` (or :func:`ablation_sampler` with ``ablation``) with draws from :func:`edm_draws`."""
  num_steps = params.get("num_steps", 18)
  latents, churn = edm_draws(key, shape, num_steps, sample_offset)
  sampler = ablation_sampler if ablation else edm_sampler
  return sampler(denoise_fn, latents, churn, **params)


# ---- classifier-free guidance and EMA --------------------------------------------------------------------

def guided_denoiser(denoise_cond_fn: DenoiseFn, denoise_uncond_fn: DenoiseFn, w: float) -> DenoiseFn:
  """Classifier-free guidance (Ho & Salimans 2022, in EDM's denoiser form): ``D_u + w (D_c - D_u)``.

  ``w = 1`` is the conditional denoiser, ``w = 0`` the unconditional one, ``w > 1`` extrapolates (Ho &
  Salimans' guidance strength ``w_HS = w - 1``). Both denoisers are evaluated at every call.
  """
  def denoise_fn(x, sigma):
    d_uncond = denoise_uncond_fn(x, sigma)
    return d_uncond + w * (denoise_cond_fn(x, sigma) - d_uncond)
  return denoise_fn


def guided_score(score_cond_fn, score_uncond_fn, w: float):
  """Classifier-free guidance of score models, ``s_u + w (s_c - s_u)``: the score of :func:`guided_denoiser` under
  :func:`score_from_denoiser` (both are affine in the score with the same coefficients), for the PC / ODE / fast
  samplers."""
  def score_fn(x, t):
    s_uncond = score_uncond_fn(x, t)
    return s_uncond + w * (score_cond_fn(x, t) - s_uncond)
  return score_fn


def drop_labels(labels: Array, u: Array, p: float, null_label: int) -> Array:
  """Label dropout for classifier-free guidance: ``labels [B]`` with those where ``u [B] < p`` (``u`` uniform in
  [0, 1)) replaced by the null class ``null_label`` (conventionally ``num_classes``), so that one network learns
  the conditional and the unconditional denoiser (Ho & Salimans 2022)."""
  return jnp.where(jnp.asarray(u) < p, jnp.asarray(null_label, jnp.asarray(labels).dtype), labels)


def ema_beta(batch_size: int, ema_halflife_kimg: float, step: Array | int = 0,
             ema_rampup_ratio: float | None = 0.05) -> Array:
  """EDM's EMA decay per step for a half-life of ``ema_halflife_kimg`` thousand images (training_loop.py).

  ``beta = 0.5 ** (batch_size / halflife_images)``; with ``ema_rampup_ratio`` the half-life is at most
  ``ema_rampup_ratio`` times the images seen before this update (``step`` steps done), so early averages
  forget fast; ``None`` or 0 turns the ramp-up off.
  """
  halflife = jnp.asarray(ema_halflife_kimg * 1000.0, jnp.float32)
  if ema_rampup_ratio:  # None or 0: no ramp-up
    seen = jnp.asarray(step, jnp.float32) * batch_size
    halflife = jnp.minimum(halflife, seen * ema_rampup_ratio)
  return 0.5 ** (batch_size / jnp.maximum(halflife, 1e-8))
