"""Samplers: predictors, correctors, the predictor-corrector loop and the probability-flow ODE.

A predictor or corrector is a small frozen dataclass holding the SDE and a batched ``score_fn(x, t)``, with
a pure ``step(x, t, noise) -> (x, x_mean)`` that takes its Gaussian draws explicitly and ``update_fn(key,
x, t)`` that draws them. :func:`pc_sample` runs Algorithm 1 of the paper (corrector, then predictor, at each
of ``N`` times from ``T`` to ``eps``) as one ``lax.scan``; :func:`ode_sample` solves the probability-flow ODE
(eq. 13) on device with diffrax. Nothing here knows about devices: wrap in ``jax.jit``/``pmap`` outside.

Randomness of the samplers is drawn per example from ``fold_in(key, sample_offset + b)``, so sample ``b``
is the same whatever the batch size it is drawn in (with ``snr_reduction='per_example'``, see below).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import randomness, sde_lib, validation

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]

__all__ = [
    "Predictor", "Corrector", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor",
    "AncestralSamplingPredictor", "NonePredictor", "LangevinCorrector", "AnnealedLangevinDynamics",
    "NoneCorrector", "PREDICTORS", "CORRECTORS", "get_predictor", "get_corrector", "pc_sample",
    "ode_sample", "make_pc_sampler", "make_ode_sampler", "pc_nfe", "SNR_REDUCTIONS", "ODE_SOLVERS",
    "check_noise", "check_solver",
    "solve_ode", "probability_flow_drift_fn", "ode_nfe",
]

SNR_REDUCTIONS = ("batch", "per_example")


def _scale(c: Array, x: Array) -> Array:
  """Per-example scalar ``c [B]`` times ``x [B, ...]``."""
  return jax.vmap(jnp.multiply)(c, x)


def check_noise(name: str, noise: Array, shape) -> None:
  """Raise ValueError unless ``noise`` has ``shape`` (explicit draws handed to a sampler)."""
  if jnp.shape(noise) != tuple(shape):
    raise ValueError(f"{name} noise must have shape {tuple(shape)}, got {jnp.shape(noise)}.")


# ---- predictors ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Predictor:
  """Base predictor: one step of a reverse-time SDE solver from ``t`` to ``t - T/N``."""

  sde: sde_lib.SDE
  score_fn: ScoreFn
  probability_flow: bool = False

  def __post_init__(self):
    if not isinstance(self.sde, sde_lib.SDE):
      raise TypeError(f"sde must be an sde_lib.SDE, got {type(self.sde).__name__}.")

  @property
  def rsde(self) -> sde_lib.ReverseSDE:
    return self.sde.reverse(self.score_fn, self.probability_flow)

  def step(self, x: Array, t: Array, noise: Array) -> tuple[Array, Array]:
    """One step with explicit standard-normal ``noise`` of ``x``'s shape; returns ``(x, x_mean)``."""
    raise NotImplementedError

  def update_fn(self, key: Array, x: Array, t: Array) -> tuple[Array, Array]:
    """One step with noise drawn from ``key``."""
    return self.step(x, t, jax.random.normal(key, x.shape, x.dtype))


@dataclasses.dataclass(frozen=True)
class EulerMaruyamaPredictor(Predictor):
  """Euler-Maruyama step of the reverse SDE with ``dt = -T/N``: ``x - f dt + g sqrt(|dt|) z``."""

  def step(self, x, t, noise):
    check_noise("predictor", noise, x.shape)
    dt = -self.sde.T / self.sde.N
    drift, diffusion = self.rsde.sde(x, t)
    x_mean = x + drift * dt
    return x_mean + _scale(diffusion * np.sqrt(-dt), noise), x_mean


@dataclasses.dataclass(frozen=True)
class ReverseDiffusionPredictor(Predictor):
  """Reverse diffusion (eq. 45/46): reverse the forward discretisation, ``x - rev_f + rev_G z``."""

  def step(self, x, t, noise):
    check_noise("predictor", noise, x.shape)
    f, G = self.rsde.discretize(x, t)
    x_mean = x - f
    return x_mean + _scale(G, noise), x_mean


@dataclasses.dataclass(frozen=True)
class AncestralSamplingPredictor(Predictor):
  """Ancestral sampling of the discrete SMLD (eq. 47) or DDPM (eq. 4 of Ho et al.) Markov chains."""

  def __post_init__(self):
    super().__post_init__()
    if not isinstance(self.sde, (sde_lib.VESDE, sde_lib.VPSDE)):
      raise ValueError(
          f"Predictor 'ancestral_sampling' is defined for VESDE and VPSDE, not {type(self.sde).__name__}; "
          "use 'reverse_diffusion' or 'euler_maruyama'.")
    if self.probability_flow:
      raise ValueError("Predictor 'ancestral_sampling' has no probability-flow variant; "
                       "set probability_flow=False or use 'reverse_diffusion'.")

  def _ve_one(self, x, t, noise):
    i = sde_lib.timestep_index(t, self.sde.N, self.sde.T)
    sigmas = jnp.asarray(self.sde.discrete_sigmas)
    sigma = sigmas[i]
    adjacent_sigma = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
    return sigma**2 - adjacent_sigma**2, jnp.sqrt(adjacent_sigma**2 * (sigma**2 - adjacent_sigma**2) / sigma**2)

  def step(self, x, t, noise):
    check_noise("predictor", noise, x.shape)
    self.sde.check_t(x, t)
    score = self.score_fn(x, t)
    if isinstance(self.sde, sde_lib.VESDE):
      def one(x, t, score, noise):
        var_step, std = self._ve_one(x, t, noise)
        x_mean = x + score * var_step
        return x_mean + std * noise, x_mean
    else:
      def one(x, t, score, noise):
        beta = jnp.asarray(self.sde.discrete_betas)[sde_lib.timestep_index(t, self.sde.N, self.sde.T)]
        x_mean = (x + beta * score) / jnp.sqrt(1.0 - beta)
        return x_mean + jnp.sqrt(beta) * noise, x_mean
    return jax.vmap(one)(x, t, score, noise)


@dataclasses.dataclass(frozen=True)
class NonePredictor(Predictor):
  """No predictor (corrector-only sampling)."""

  def step(self, x, t, noise):
    return x, x


# ---- correctors ------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Corrector:
  """Base corrector: ``n_steps`` steps of Langevin MCMC targeting ``p_t`` at fixed ``t``.

  ``snr_reduction`` says how the Langevin step size sees the gradient and noise norms: ``'batch'`` (the
  original's choice, norms averaged over the batch, which makes a sample depend on its batch-mates) or
  ``'per_example'`` (each example's own norms; samples do not depend on the batch).
  """

  sde: sde_lib.SDE
  score_fn: ScoreFn
  snr: float = 0.16
  n_steps: int = 1
  snr_reduction: str = "batch"

  def __post_init__(self):
    if not isinstance(self.sde, sde_lib.SDE):
      raise TypeError(f"sde must be an sde_lib.SDE, got {type(self.sde).__name__}.")
    if not validation.is_int(self.n_steps, 0):
      raise ValueError(f"n_steps must be a non-negative integer number of corrector steps, got {self.n_steps!r}.")
    if not np.isfinite(self.snr) or self.snr < 0:
      raise ValueError(f"snr must be a finite number >= 0, got {self.snr!r}.")
    if self.snr_reduction not in SNR_REDUCTIONS:
      raise ValueError(f"snr_reduction must be one of {SNR_REDUCTIONS}, got {self.snr_reduction!r}.")

  def _alpha(self, t: Array) -> Array:
    """The step-size factor: 1 for VE, the DDPM ``alpha_i`` for VP and sub-VP."""
    if isinstance(self.sde, sde_lib.VESDE):
      return jnp.ones_like(t)
    return jax.vmap(self.sde.discrete_alpha)(t)

  def step_size(self, x: Array, t: Array, grad: Array, noise: Array) -> Array:
    """Langevin step size ``[B]`` for the current state."""
    raise NotImplementedError

  def step(self, x: Array, t: Array, noise: Array) -> tuple[Array, Array]:
    """``n_steps`` Langevin steps with explicit noise ``[n_steps, *x.shape]``; returns ``(x, x_mean)``."""
    check_noise("corrector", noise, (self.n_steps,) + tuple(x.shape))
    self.sde.check_t(x, t)

    def langevin_step(carry, z):
      x, _ = carry
      grad = self.score_fn(x, t)
      eps = self.step_size(x, t, grad, z)
      x_mean = x + _scale(eps, grad)
      return (x_mean + _scale(jnp.sqrt(2 * eps), z), x_mean), None

    (x, x_mean), _ = jax.lax.scan(langevin_step, (x, x), noise)
    return x, x_mean

  def update_fn(self, key: Array, x: Array, t: Array) -> tuple[Array, Array]:
    return self.step(x, t, jax.random.normal(key, (self.n_steps,) + tuple(x.shape), x.dtype))


def _norms(v: Array) -> Array:
  return jax.vmap(lambda u: jnp.sqrt(jnp.sum(u**2)))(v)


@dataclasses.dataclass(frozen=True)
class LangevinCorrector(Corrector):
  """Langevin corrector (Algorithm 5): ``eps = 2 alpha (snr |z| / |score|)^2``."""

  def step_size(self, x, t, grad, noise):
    grad_norm, noise_norm = _norms(grad), _norms(noise)
    if self.snr_reduction == "batch":
      grad_norm, noise_norm = jnp.mean(grad_norm), jnp.mean(noise_norm)
    return (self.snr * noise_norm / grad_norm) ** 2 * 2 * self._alpha(t)


@dataclasses.dataclass(frozen=True)
class AnnealedLangevinDynamics(Corrector):
  """Annealed Langevin dynamics of NCSN: ``eps = 2 alpha (snr s(t))^2`` with the marginal std ``s(t)``."""

  def step_size(self, x, t, grad, noise):
    std = self.sde.marginal_prob(x, t)[1]
    return (self.snr * std) ** 2 * 2 * self._alpha(t)


@dataclasses.dataclass(frozen=True)
class NoneCorrector(Corrector):
  """No corrector (predictor-only sampling)."""

  def step(self, x, t, noise):
    return x, x


PREDICTORS = {
    "euler_maruyama": EulerMaruyamaPredictor,
    "reverse_diffusion": ReverseDiffusionPredictor,
    "ancestral_sampling": AncestralSamplingPredictor,
    "none": NonePredictor,
}
CORRECTORS = {
    "langevin": LangevinCorrector,
    "ald": AnnealedLangevinDynamics,
    "none": NoneCorrector,
}


def get_predictor(name: str | None) -> type[Predictor]:
  """The predictor class named ``name`` (``None`` means ``'none'``)."""
  key = "none" if name is None else str(name).lower()
  if key not in PREDICTORS:
    raise ValueError(f"Unknown predictor {name!r}; expected one of {sorted(PREDICTORS)}.")
  return PREDICTORS[key]


def get_corrector(name: str | None) -> type[Corrector]:
  """The corrector class named ``name`` (``None`` means ``'none'``)."""
  key = "none" if name is None else str(name).lower()
  if key not in CORRECTORS:
    raise ValueError(f"Unknown corrector {name!r}; expected one of {sorted(CORRECTORS)}.")
  return CORRECTORS[key]


# ---- predictor-corrector sampler -------------------------------------------------------------------------

def pc_nfe(N: int, n_steps: int, predictor: str | None = "reverse_diffusion",
           corrector: str | None = "langevin") -> int:
  """Score evaluations of the PC sampler: ``N (n_steps + 1)``, as the original charges it (the default names).
  Given the predictor and corrector names, the evaluations actually made: a ``'none'`` predictor saves ``N``,
  a ``'none'`` corrector ``N n_steps``."""
  used = lambda name: name not in (None, "none")
  return N * (int(used(predictor)) + int(used(corrector)) * n_steps)


def pc_sample(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, shape, *, predictor: str | None = "reverse_diffusion",
              corrector: str | None = "langevin", snr: float = 0.16, n_steps: int = 1,
              probability_flow: bool = False, denoise: bool = True, eps: float = 1e-3,
              snr_reduction: str = "batch", sample_offset=0, draws: tuple[Array, Array, Array] | None = None,
              return_trajectory: bool = False, constraint=None):
  """Predictor-corrector sampling (Algorithm 1): corrector then predictor at each of ``N`` times.

  Args:
    key: PRNG key (unused when ``draws`` is given).
    sde: forward SDE; ``sde.N`` steps on ``linspace(T, eps, N)``.
    score_fn: batched ``score_fn(x, t)``.
    shape: ``(B, ...)`` of the samples.
    predictor, corrector: names from :data:`PREDICTORS` / :data:`CORRECTORS` (or None).
    snr, n_steps: corrector signal-to-noise ratio and steps per time.
    probability_flow: predictor follows the probability-flow ODE.
    denoise: return the last predictor's noise-free mean ``x_mean`` instead of ``x``.
    eps: last time.
    snr_reduction: ``'batch'`` (original) or ``'per_example'`` Langevin step sizes.
    sample_offset: index of the first example, for per-example keys (chunked sampling).
    draws: optional explicit standard normals ``(prior [B, ...], corrector [N, n_steps, B, ...],
      predictor [N, B, ...])`` instead of drawing from ``key``.
    return_trajectory: also return a dict of per-step ``corrector_x``, ``corrector_x_mean``,
      ``predictor_x``, ``predictor_x_mean``, each ``[N, B, ...]``.
    constraint: controllable generation (paper App. I.2; :mod:`score_jax.controllable`): an object with
      ``apply(x, x_mean, t [B], noise) -> (x, x_mean)``, applied after the corrector and after the predictor
      at every step with standard normals of ``x``'s shape drawn from the per-example keys, and
      ``final(x) -> x``, applied to the returned samples (e.g. known pixels restored exactly). ``None``:
      unconditional sampling, unchanged.

  Returns:
    ``(samples [B, ...], nfe)`` (and the trajectory dict if requested); ``nfe = N (n_steps + 1)``.
  """
  shape = tuple(int(s) for s in shape)
  if len(shape) < 1 or shape[0] < 1:
    raise ValueError(f"shape must be (B, ...) with B >= 1, got {shape}.")
  if not 0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps!r}.")
  pred = get_predictor(predictor)(sde, score_fn, probability_flow)
  corr = get_corrector(corrector)(sde, score_fn, snr, n_steps, snr_reduction)
  B, N = shape[0], sde.N
  timesteps = jnp.asarray(sde_lib.torch_linspace(sde.T, eps, N))

  if constraint is not None and draws is not None and key is None:
    raise ValueError("a constraint draws its noise from key; pass a key along with draws.")
  if constraint is not None:
    keys = randomness.example_keys(key, B, sample_offset)
    constraint_noise_fn = lambda i, stream: randomness.normal_draws(keys, stream, i + 1, shape[1:])
  if draws is not None:
    prior_noise, corrector_noise, predictor_noise = (jnp.asarray(d) for d in draws)
    check_noise("prior", prior_noise, shape)
    check_noise("corrector", corrector_noise, (N, n_steps) + shape)
    check_noise("predictor", predictor_noise, (N,) + shape)
    noise_fn = lambda i: (corrector_noise[i], predictor_noise[i])
  else:
    keys = randomness.example_keys(key, B, sample_offset)
    prior_noise = randomness.normal_draws(keys, randomness.PRIOR, 0, shape[1:])

    def noise_fn(i):
      corrector_noise = randomness.normal_draws(keys, randomness.CORRECTOR, i + 1, (n_steps,) + shape[1:])
      predictor_noise = randomness.normal_draws(keys, randomness.PREDICTOR, i + 1, shape[1:])
      return jnp.moveaxis(corrector_noise, 1, 0), predictor_noise

  x = prior_noise * sde.prior_std()

  def pc_step(carry, inputs):
    x, _ = carry
    i, t = inputs
    vec_t = jnp.full((B,), t)
    corrector_noise, predictor_noise = noise_fn(i)
    xc, xc_mean = corr.step(x, vec_t, corrector_noise)
    if constraint is not None:
      xc, xc_mean = constraint.apply(xc, xc_mean, vec_t, constraint_noise_fn(i, randomness.CONSTRAINT_AFTER_CORRECTOR))
    xp, xp_mean = pred.step(xc, vec_t, predictor_noise)
    if constraint is not None:
      xp, xp_mean = constraint.apply(xp, xp_mean, vec_t, constraint_noise_fn(i, randomness.CONSTRAINT_AFTER_PREDICTOR))
    traj = dict(corrector_x=xc, corrector_x_mean=xc_mean, predictor_x=xp, predictor_x_mean=xp_mean)
    return (xp, xp_mean), (traj if return_trajectory else None)

  (x, x_mean), traj = jax.lax.scan(pc_step, (x, x), (jnp.arange(N), timesteps))
  samples = x_mean if denoise else x
  if constraint is not None:
    samples = constraint.final(samples)
  nfe = pc_nfe(N, n_steps)  # charged as the original does, whatever the predictor and corrector
  return (samples, nfe, traj) if return_trajectory else (samples, nfe)


# ---- probability-flow ODE sampler ------------------------------------------------------------------------

# diffrax solvers for the probability-flow ODE, with the vector-field evaluations each costs: ``(per step,
# at start)``. FSAL tableaus (Bosh3, Tsit5, Dopri5, Dopri8) reuse their last stage as the next step's first, so
# an attempted step costs one stage less than the tableau has, plus one evaluation at the start; rejected
# steps cost the same (tests/test_sampling_oracle.py counts them with a host callback). Euler has no error
# estimate and runs with fixed steps only. Tsit5 is the default: in float32, Dopri5's error estimate lets
# ~0.2% errors through on the sub-VP probability-flow ODE at rtol=atol=1e-5 where Tsit5 stays at ~2e-5.
ODE_SOLVERS = {
    "euler": diffrax.Euler, "heun": diffrax.Heun, "midpoint": diffrax.Midpoint, "ralston": diffrax.Ralston,
    "bosh3": diffrax.Bosh3, "tsit5": diffrax.Tsit5, "dopri5": diffrax.Dopri5, "dopri8": diffrax.Dopri8,
}
_ODE_EVALS = {"euler": (1, 0), "heun": (2, 0), "midpoint": (2, 0), "ralston": (2, 0), "bosh3": (3, 1),
              "tsit5": (6, 1), "dopri5": (6, 1), "dopri8": (13, 1)}
_FIXED_STEP_ONLY = ("euler",)


def probability_flow_drift_fn(sde: sde_lib.SDE, score_fn: ScoreFn) -> Callable[[Array, Array], Array]:
  """``drift(t, x)`` of the probability-flow ODE (eq. 13) for a scalar time ``t`` and batch ``x``."""
  rsde = sde.reverse(score_fn, probability_flow=True)
  return lambda t, x: rsde.sde(x, jnp.full((x.shape[0],), t, x.dtype))[0]


def check_solver(solver: str, steps: int) -> None:
  """Raise ValueError for an unknown ODE solver name or a step count that is not an int >= 0."""
  if solver not in ODE_SOLVERS:
    raise ValueError(f"Unknown ODE solver {solver!r}; expected one of {sorted(ODE_SOLVERS)}.")
  if not validation.is_int(steps, 0):
    raise ValueError(f"ODE steps must be an integer >= 0 (0 = adaptive step size), got {steps!r}.")
  if steps == 0 and solver in _FIXED_STEP_ONLY:
    raise ValueError(f"ODE solver {solver!r} has no error estimate, so it cannot choose its step size: give it a "
                     "fixed number of steps (sampling.ode_steps > 0) or use an adaptive solver such as 'tsit5'.")


def ode_nfe(solver: str, num_steps):
  """Vector-field evaluations of ``num_steps`` attempted steps of ``solver`` (rejected ones included)."""
  per_step, at_start = _ODE_EVALS[solver]
  return at_start + per_step * num_steps


def solve_ode(vector_field: Callable[[Array, Any], Any], y0, t0: float, t1: float, *, rtol: float = 1e-5,
              atol: float = 1e-5, solver: str = "tsit5", max_steps: int = 100_000, steps: int = 0):
  """Explicit Runge-Kutta solve of ``dy/dt = vector_field(t, y)`` from t0 to t1 on device (diffrax).

  ``solver`` is one of :data:`ODE_SOLVERS`. With ``steps = 0`` the step size is adaptive: the error is
  controlled per step in the RMS norm scaled by ``atol + rtol |y|``, as scipy does (``'dopri5'`` is scipy's
  RK45); with ``steps > 0`` the solver takes that many equal steps and the tolerances are unused.

  Returns:
    ``(y(t1), nfe)``: the state at ``t1`` (a pytree like ``y0``) and the number of vector-field evaluations.
  """
  check_solver(solver, steps)
  if steps == 0 and not (rtol > 0 and atol > 0):
    raise ValueError(f"rtol and atol must be > 0, got rtol={rtol!r}, atol={atol!r}.")
  term = diffrax.ODETerm(lambda t, y, args: vector_field(t, y))
  if steps:
    controller, dt0, max_steps = diffrax.ConstantStepSize(), (t1 - t0) / steps, steps
  else:
    controller, dt0 = diffrax.PIDController(rtol=rtol, atol=atol), None
  sol = diffrax.diffeqsolve(term, ODE_SOLVERS[solver](), t0=t0, t1=t1, dt0=dt0, y0=y0,
                            stepsize_controller=controller, saveat=diffrax.SaveAt(t1=True), max_steps=max_steps,
                            throw=True)
  y1 = jax.tree_util.tree_map(lambda leaf: leaf[-1], sol.ys)
  return y1, ode_nfe(solver, sol.stats["num_steps"])


def ode_sample(key: Array, sde: sde_lib.SDE, score_fn: ScoreFn, shape, *, z: Array | None = None,
               rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-3, denoise: bool = False,
               solver: str = "tsit5", max_steps: int = 100_000, steps: int = 0):
  """Sample by solving the probability-flow ODE from ``T`` to ``eps`` (diffrax, on device).

  The batch is solved as one system (one step size for all examples, as the original does with scipy).

  Args:
    key: PRNG key for the prior sample (ignored when ``z`` is given).
    sde, score_fn: forward SDE and batched score.
    shape: ``(B, ...)``.
    z: optional prior sample ``[B, ...]`` to start from.
    rtol, atol: solver tolerances.
    eps: final time.
    denoise: finish with one noise-free reverse-diffusion step at ``eps``.
    solver: one of :data:`ODE_SOLVERS`; max_steps: adaptive step budget (an error if exceeded).
    steps: 0 for adaptive steps, else that many equal steps in ``t``.

  Returns:
    ``(samples [B, ...], nfe)`` with ``nfe`` the number of score evaluations (a device scalar).
  """
  shape = tuple(int(s) for s in shape)
  if not 0 < eps < sde.T:
    raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps!r}.")
  check_solver(solver, steps)
  if z is None:
    x = sde.prior_sampling(key, shape)
  else:
    check_noise("z (prior sample)", z, shape)
    x = z
  x, nfe = solve_ode(probability_flow_drift_fn(sde, score_fn), x, sde.T, eps, rtol=rtol, atol=atol,
                     solver=solver, max_steps=max_steps, steps=steps)
  if denoise:
    vec_eps = jnp.full((shape[0],), eps, x.dtype)
    _, x = ReverseDiffusionPredictor(sde, score_fn).step(x, vec_eps, jnp.zeros_like(x))
    nfe = nfe + 1
  return x, nfe


def make_pc_sampler(sde: sde_lib.SDE, score_fn: ScoreFn, shape, **kwargs):
  """A jitted ``sample(key, sample_offset=0) -> (samples, nfe)`` running :func:`pc_sample`."""
  sampler = jax.jit(lambda key, offset: pc_sample(key, sde, score_fn, shape, sample_offset=offset, **kwargs)[0])
  nfe = pc_nfe(sde.N, kwargs.get("n_steps", 1))
  return lambda key, sample_offset=0: (sampler(key, sample_offset), nfe)


def make_ode_sampler(sde: sde_lib.SDE, score_fn: ScoreFn, shape, **kwargs):
  """A jitted ``sample(key, z=None) -> (samples, nfe)`` running :func:`ode_sample`."""
  with_z = jax.jit(lambda z: ode_sample(None, sde, score_fn, shape, z=z, **kwargs))
  return lambda key, z=None: with_z(sde.prior_sampling(key, shape) if z is None else z)
