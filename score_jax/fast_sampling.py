"""Fast samplers after the paper: DDIM, DPM-Solver++(2M) and EDM's Heun, for VE, VP and sub-VP models.

All three step in the variable ``y = x / a(t)`` against the noise level ``sigma(t) = s(t) / a(t)``
(:meth:`score_jax.sde_lib.SDE.noise_to_signal`). There every SDE here is variance exploding, and the
probability-flow ODE (eq. 13) becomes EDM's (Karras et al. 2022, eq. 3 with s = 1)

    dy / dsigma = (y - D(y, sigma)) / sigma,    D(y, sigma) = y + sigma^2 a(t) score(a(t) y, t),

with ``D`` the denoiser (Tweedie's formula for ``E[x_0 | y]``). So one score network serves all three
samplers through this change of variables; the time ``t`` fed to the network is recovered from sigma in
closed form (:meth:`~score_jax.sde_lib.SDE.time_of_noise_to_signal`).

- DDIM (Song, Meng & Ermon 2021): Euler in ``sigma`` on the ODE above (first order); ``eta > 0`` adds
  fresh noise with DDIM's posterior standard deviation (``eta = 1``: ancestral DDPM sampling).
- DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): a second-order multistep exponential integrator in
  ``lambda = -log sigma`` on the data prediction ``D``, first order at the first step and, with fewer than 15
  steps, at the last step too. That rule is score_jax's own: the reference implementation (``dpm_solver``'s
  ``lower_order_final``) codes it as fewer than 10 steps, and k-diffusion's ``sample_dpmpp_2m`` takes its last
  step at first order exactly when the step goes to sigma = 0, whatever the step count. Below 15 steps the
  first-order last step measured more accurate (issue 16's comparison, which otherwise found score_jax and
  k-diffusion agreeing to 1e-14 in float64).
- Heun (Karras et al. 2022, Algorithm 1, deterministic): second-order trapezoidal steps in ``sigma`` with
  the ``rho = 7`` noise-level schedule.

A sampler is one ``lax.scan`` over a fixed time grid of ``n`` steps from ``T`` down to ``eps``
(:func:`time_steps`), with the state carried in ``y``; it returns ``x = a(eps) y`` or, with ``denoise``,
the final denoiser output ``D`` (one more evaluation), like the PC sampler's noise removal. Randomness is
drawn per example from ``fold_in(key, sample_offset + b)`` as in :mod:`score_jax.sampling`: the prior
draw is the same one :func:`score_jax.sampling.pc_sample` makes, so the samplers start from the same noise.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import randomness, sampling, sde_lib, validation

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = ["SCHEDULES", "FAST_SAMPLERS", "DEFAULT_SCHEDULES", "time_steps", "denoiser_fn", "fast_sample",
           "fast_nfe"]

SCHEDULES = ("time_uniform", "time_quadratic", "logsnr", "karras")
DEFAULT_SCHEDULES = {"ddim": "time_uniform", "dpm_solver": "logsnr", "heun": "karras"}
# Evaluations of the score per step.
_EVALS_PER_STEP = {"ddim": 1, "dpm_solver": 1, "heun": 2}
FAST_SAMPLERS = tuple(_EVALS_PER_STEP)
# The last step is first order below this many steps (score_jax's rule, measured more accurate; the reference
# implementation's lower_order_final uses 10, k-diffusion's sample_dpmpp_2m its final sigma being 0).
_LOWER_ORDER_FINAL_BELOW = 15
EDM_RHO = 7.0  # Karras et al. 2022, eq. 5: the exponent of the noise-level schedule


def _check_steps(n) -> int:
  if not validation.is_int(n, 1):
    raise ValueError(f"the number of sampler steps must be an integer >= 1, got {n!r}.")
  return int(n)


def time_steps(sde: sde_lib.SDE, n: int, schedule: str, eps: float = 1e-3, rho: float = EDM_RHO) -> Array:
  """``n + 1`` decreasing times from ``T`` to ``eps``.

  Schedules: ``'time_uniform'`` (equal steps in t, DDIM's), ``'time_quadratic'`` (equal steps in
  ``sqrt(t)``), ``'logsnr'`` (equal steps in ``lambda = -log sigma``, DPM-Solver's) and ``'karras'``
  (``sigma_i^(1/rho)`` equally spaced, EDM eq. 5).
  """
  n = _check_steps(n)
  if schedule not in SCHEDULES:
    raise ValueError(f"Unknown time-step schedule {schedule!r}; expected one of {list(SCHEDULES)}.")
  if not 0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps!r}.")
  if not rho > 0:
    raise ValueError(f"rho must be > 0, got {rho!r}.")
  frac = jnp.linspace(0.0, 1.0, n + 1)
  if schedule == "time_uniform":
    return sde.T + frac * (eps - sde.T)
  if schedule == "time_quadratic":
    return (np.sqrt(sde.T) + frac * (np.sqrt(eps) - np.sqrt(sde.T))) ** 2
  sigma_max, sigma_min = (sde.noise_to_signal(jnp.asarray(t, frac.dtype)) for t in (sde.T, eps))
  if schedule == "logsnr":
    sigmas = jnp.exp(jnp.log(sigma_max) + frac * (jnp.log(sigma_min) - jnp.log(sigma_max)))
  else:
    sigmas = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
  # The end points exactly, not through the round trip sigma -> t.
  return jnp.clip(sde.time_of_noise_to_signal(sigmas), eps, sde.T).at[0].set(sde.T).at[-1].set(eps)


def denoiser_fn(sde: sde_lib.SDE, score_fn: ScoreFn) -> Callable[[Array, Array], Array]:
  """``D(y [B, ...], t) -> E[x_0 | y]``: Tweedie's denoiser in ``y = x / a(t)`` at a scalar time ``t``."""
  def denoise(y, t):
    vec_t = jnp.full((y.shape[0],), t, y.dtype)
    a, s = sde.marginal_one(jnp.ones((), y.dtype), t)
    sigma = s / a
    return y + sigma**2 * a * score_fn(a * y, vec_t)
  return denoise


def fast_nfe(method: str, n: int, denoise: bool = False) -> int:
  """Score evaluations of ``n`` steps of ``method`` (plus one for the final denoising)."""
  return _EVALS_PER_STEP[method] * n + int(denoise)


# ---- the step functions ----------------------------------------------------------------------------------
# Each takes the state ``y`` at noise level ``sigma`` (time ``t``) to ``sigma_next``; D is the denoiser.

def _ddim_step(D, y, t, sigma, sigma_next, eta, noise):
  """DDIM: ``y' = D + sqrt(sigma'^2 - c^2) eps_hat + c z`` with ``c = eta sigma' sqrt(1 - sigma'^2 / sigma^2)``
  (Song et al. 2021, eq. 12 and 16, in y); ``eta = 0`` is Euler's method on the probability-flow ODE."""
  x0 = D(y, t)
  eps_hat = (y - x0) / sigma
  c = eta * sigma_next * jnp.sqrt(jnp.maximum(1.0 - (sigma_next / sigma) ** 2, 0.0))
  return x0 + jnp.sqrt(sigma_next**2 - c**2) * eps_hat + c * noise


def _dpm_solver_2m_step(x0, x0_prev, y, sigma, sigma_next, h, h_prev, first_order):
  """DPM-Solver++(2M): ``y' = (sigma'/sigma) y + (1 - sigma'/sigma) D_bar`` with ``D_bar = (1 + 1/(2r)) D_i
  - 1/(2r) D_{i-1}``, ``r = h_{i-1} / h_i`` (Lu et al. 2022, Algorithm 2, in y)."""
  half_inv_r = 0.5 * h / h_prev
  x0_bar = jnp.where(first_order, x0, (1.0 + half_inv_r) * x0 - half_inv_r * x0_prev)
  ratio = sigma_next / sigma
  return ratio * y + (1.0 - ratio) * x0_bar


def _heun_step(D, y, t, t_next, sigma, sigma_next):
  """EDM's Heun step (Karras et al. 2022, Algorithm 1, lines 5-8) on ``dy/dsigma = (y - D) / sigma``."""
  d = (y - D(y, t)) / sigma
  y_euler = y + (sigma_next - sigma) * d
  d_next = (y_euler - D(y_euler, t_next)) / sigma_next
  return y + (sigma_next - sigma) * 0.5 * (d + d_next)


# ---- the loop --------------------------------------------------------------------------------------------

def fast_sample(method: str, key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, shape, *, steps: int,
                schedule: str | None = None, eta: float = 0.0, rho: float = EDM_RHO, eps: float = 1e-3,
                denoise: bool = False, sample_offset=0, z: Array | None = None,
                clip_denoised: tuple[float, float] | None = None):
  """Sample with ``method`` (``'ddim'``, ``'dpm_solver'`` or ``'heun'``) in ``steps`` steps from ``T`` to ``eps``.

  Args:
    method: one of :data:`FAST_SAMPLERS`.
    key: PRNG key (per-example keys ``fold_in(key, sample_offset + b)``); unused when ``z`` is given and
      the sampler is deterministic.
    sde: forward SDE; score_fn: batched ``score_fn(x [B, ...], t [B])``.
    shape: ``(B, ...)`` of the samples.
    steps: number of steps; schedule: one of :data:`SCHEDULES` (``None``: the method's default in
      :data:`DEFAULT_SCHEDULES`); rho: exponent of the ``'karras'`` schedule.
    eta: DDIM's stochasticity (``'ddim'`` only; 0 is deterministic).
    eps: final time; denoise: return the denoiser output at ``eps`` (one more evaluation).
    sample_offset: index of the first example (chunked sampling).
    z: optional standard-normal prior draw ``[B, ...]`` (scaled by ``sde.prior_std()`` here).
    clip_denoised: ``(low, high)``: clip every denoiser output ``D`` to this range (the data's), as DDPM's
      sampler clips its ``x_0`` prediction (``clip_denoised``) and DPM-Solver++ thresholds it; None: no clipping
      (the paper's samplers). Early in training an epsilon-predicting network's error is multiplied by sigma in
      ``D`` (sigma(T) = 152 for the VP SDE), and the unclipped samples end saturated.

  Returns:
    ``(samples [B, ...], nfe)`` with ``nfe`` the number of score evaluations (:func:`fast_nfe`).
  """
  if method not in _EVALS_PER_STEP:
    raise ValueError(f"Unknown fast sampler {method!r}; expected one of {list(FAST_SAMPLERS)}.")
  shape = tuple(int(s) for s in shape)
  if len(shape) < 1 or shape[0] < 1:
    raise ValueError(f"shape must be (B, ...) with B >= 1, got {shape}.")
  if not (np.isfinite(eta) and eta >= 0):
    raise ValueError(f"eta must be a finite number >= 0, got {eta!r}.")
  if eta and method != "ddim":
    raise ValueError(f"eta={eta!r} is DDIM's stochasticity; sampler {method!r} is deterministic (use eta=0).")
  schedule = DEFAULT_SCHEDULES[method] if schedule in (None, "") else schedule
  steps = _check_steps(steps)
  ts = time_steps(sde, steps, schedule, eps, rho)  # [steps + 1]
  keys = randomness.example_keys(key, shape[0], sample_offset) if (z is None or eta) else None
  if z is None:
    z = randomness.normal_draws(keys, randomness.PRIOR, 0, shape[1:])
  else:
    sampling.check_noise("z (prior draw)", z, shape)
  D = denoiser_fn(sde, score_fn)
  if clip_denoised is not None:
    low, high = (float(v) for v in clip_denoised)
    if not low < high:
      raise ValueError(f"clip_denoised must be (low, high) with low < high, got {clip_denoised!r}.")
    unclipped = D
    D = lambda y, t: jnp.clip(unclipped(y, t), low, high)
  sigma_of = lambda t: sde.noise_to_signal(t)
  a_T = sde.marginal_one(jnp.ones((), z.dtype), jnp.asarray(sde.T, z.dtype))[0]
  y = z * sde.prior_std() / a_T
  sigmas = sigma_of(ts)
  lambdas = -jnp.log(sigmas)
  index = jnp.arange(steps)
  inputs = (index, ts[:-1], ts[1:], sigmas[:-1], sigmas[1:])

  if method == "ddim":
    def body(y, inp):
      i, t, _, sigma, sigma_next = inp
      noise = randomness.normal_draws(keys, randomness.PREDICTOR, i + 1, shape[1:]) if eta else jnp.zeros_like(y)
      return _ddim_step(D, y, t, sigma, sigma_next, eta, noise), None
    y, _ = jax.lax.scan(body, y, inputs)
  elif method == "heun":
    def body(y, inp):
      _, t, t_next, sigma, sigma_next = inp
      return _heun_step(D, y, t, t_next, sigma, sigma_next), None
    y, _ = jax.lax.scan(body, y, inputs)
  else:
    hs = lambdas[1:] - lambdas[:-1]  # [steps], > 0
    h_prev = jnp.concatenate([hs[:1], hs[:-1]])
    last_first_order = steps < _LOWER_ORDER_FINAL_BELOW

    def body(carry, inp):
      y, x0_prev = carry
      (i, t, _, sigma, sigma_next), h, hp = inp
      x0 = D(y, t)
      first_order = (i == 0) | (last_first_order & (i == steps - 1))
      return (_dpm_solver_2m_step(x0, x0_prev, y, sigma, sigma_next, h, hp, first_order), x0), None
    (y, _), _ = jax.lax.scan(body, (y, jnp.zeros_like(y)), (inputs, hs, h_prev))

  if denoise:
    x = D(y, ts[-1])
  else:
    x = sde.marginal_one(y, ts[-1])[0]  # a(eps) y
  return x, fast_nfe(method, steps, denoise)
