"""Oracle tests of the samplers: exact scores of Gaussian and Gaussian-mixture data.

Every sampler here is fed the EXACT score of its target, so whatever distance remains between its samples
and the data is the sampler's own (finite-N discretisation, Langevin bias, Monte-Carlo error), and each
tolerance below says which of these it allows for and why.

The target is the product of two independent 2-D blocks, ``N(0, TAU^2 I_2) x gmm.default_mixture()``
(a 4-D distribution): every perturbation kernel here is isotropic, so ``p_t`` of the product is the product
of the blocks' ``p_t`` and the exact score is the two blocks' scores side by side. One sampler run then
checks both oracles, which halves the number of compilations of the full SDE x predictor x corrector grid.
"""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracles import (
  BATCH,
  CORRECTORS,
  MIXTURE,
  PREDICTORS,
  SDE_NAMES,
  SNR,
  assert_matches_target,
  evaluation_counter,
  gaussian_score_fn,
  make_sde,
  mixture_score_fn,
  product_score_fn,
  reference_statistics,
  sample_product,
  statistics,
)

from score_jax import sampling


@pytest.fixture(scope="module")
def reference():
  """Mean, squared standard error and RMS of every statistic under the exact target (t = 0)."""
  return reference_statistics()


def test_mixture_score_is_gmm_score():
  """The vectorised score used here is ``gmm.GaussianMixture.score_fn``, at any time, for every SDE."""
  x = 4.0 * jax.random.normal(jax.random.PRNGKey(0), (64, 2))
  t = jax.random.uniform(jax.random.PRNGKey(1), (64,), minval=1e-3, maxval=1.0)
  for name in SDE_NAMES:
    sde = make_sde(name, 100)
    expected = np.asarray(jax.jit(MIXTURE.score_fn(sde))(x, t))
    np.testing.assert_allclose(jax.jit(mixture_score_fn(sde))(x, t), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())


def test_statistics_detect_a_wrong_distribution(reference):
  """The check has power: exact samples pass it; modes 5% too wide, or one mode moved, do not."""
  x = np.asarray(sample_product(jax.random.PRNGKey(7), BATCH))
  assert_matches_target(x, reference, 0.0, "exact samples")
  label = np.argmax(statistics(x)[:, 10:17], axis=1)
  wide = x.copy()
  wide[:, 2:] = MIXTURE.means[label] + 1.05 * (x[:, 2:] - MIXTURE.means[label])
  with pytest.raises(AssertionError, match="Mahalanobis"):
    assert_matches_target(wide, reference, 0.0)
  moved = x.copy()
  moved[label == 6, 2] += 0.6  # the central mode (std 0.55) moves by 0.6
  with pytest.raises(AssertionError, match="mix"):
    assert_matches_target(moved, reference, 0.0)


# ---- the predictor-corrector grid -------------------------------------------------------------------------

# Systematic error allowed for, relative to each statistic's RMS:
# * predictors at N = 500 steps: the O(1/N) discretisation error (largest measured with 20k samples: 1.8%,
#   within noise) plus p_eps vs p_0 at eps = 1e-3 (sigma(eps)^2 = 1e-4 against mode variances >= 0.05);
DISCRETISATION = 0.02
# * the Langevin corrector is unadjusted Langevin with step 2 snr^2 v for a target of variance v, whose
#   stationary variance is v / (1 - snr^2): the modes come out ~snr^2 = 2.6% too wide (measured 2.5-3.1%
#   at N = 500, not decreasing with N). The PC runs keep the default snr = 0.16 (the one users run) and
#   allow for this bias; a smaller snr would shrink it but relax more slowly, a larger one widen the modes.
LANGEVIN_BIAS = SNR**2
# * corrector-only sampling is annealed Langevin alone. It lags behind p_t where p_t changes faster than it
#   relaxes, and ALD's step 2 snr^2 s(t)^2 vanishes with s(t) before p_t settles (for sub-VP, whose
#   v(t) = a^2 tau^2 + s^2 dips below tau^2 near t = 0, it freezes at the dip). Budgets: Langevin at the
#   default snr, N = 500 x 4 steps; ALD needs a larger snr, N = 200 x 10 steps at snr 0.4. Measured with
#   10k samples: VE <= 3.5%; VP / sub-VP up to 7% (central mode over-weighted, Gaussian block too narrow for
#   sub-VP ALD). Allowances are those with a margin: corrector-only runs are a coarse check, the PC runs
#   above are the sharp one.
CORRECTOR_ONLY = {  # corrector -> (N, n_steps, snr); (sde, corrector) -> allowance
    "langevin": (500, 4, SNR), "ald": (200, 10, 0.4),
    ("vesde", "langevin"): 0.05, ("vesde", "ald"): 0.05,
    ("vpsde", "langevin"): 0.10, ("vpsde", "ald"): 0.10,
    ("subvpsde", "langevin"): 0.10, ("subvpsde", "ald"): 0.10,
}


def _grid():
  for sde_name, predictor, corrector in itertools.product(SDE_NAMES, PREDICTORS, CORRECTORS):
    if (predictor, corrector) == ("none", "none"):
      continue  # degenerate: test_no_predictor_no_corrector_returns_the_prior
    if (sde_name, predictor) == ("subvpsde", "ancestral_sampling"):
      continue  # undefined: test_ancestral_sampling_is_undefined_for_subvp
    yield sde_name, predictor, corrector


def _settings(sde_name, predictor, corrector):
  """``(N, n_steps, snr, batch, delta)`` of one grid point (see the allowances above)."""
  if predictor == "none":
    N, n_steps, snr = CORRECTOR_ONLY[corrector]
    return N, n_steps, snr, BATCH // 2, CORRECTOR_ONLY[(sde_name, corrector)]
  delta = DISCRETISATION + (LANGEVIN_BIAS if corrector == "langevin" else 0.0)
  return 500, 1, SNR, BATCH, delta


@pytest.mark.parametrize("sde_name,predictor,corrector", list(_grid()))
def test_pc_sampler_matches_target(sde_name, predictor, corrector, reference):
  N, n_steps, snr, batch, delta = _settings(sde_name, predictor, corrector)
  sde = make_sde(sde_name, N)
  sample = jax.jit(lambda key: sampling.pc_sample(
      key, sde, product_score_fn(sde), (batch, 4), predictor=predictor, corrector=corrector, snr=snr,
      n_steps=n_steps))
  x, nfe = sample(jax.random.PRNGKey(1))
  assert int(nfe) == N * (n_steps + 1)
  assert_matches_target(x, reference, delta, f"{sde_name} {predictor} + {corrector}")


@pytest.mark.parametrize("corrector", CORRECTORS)
def test_ancestral_sampling_is_undefined_for_subvp(corrector):
  sde = make_sde("subvpsde", 20)
  with pytest.raises(ValueError, match="'ancestral_sampling' is defined for VESDE and VPSDE, not subVPSDE"):
    sampling.pc_sample(jax.random.PRNGKey(0), sde, gaussian_score_fn(sde), (8, 2),
                       predictor="ancestral_sampling", corrector=corrector)


@pytest.mark.parametrize("sde_name", SDE_NAMES)
def test_no_predictor_no_corrector_returns_the_prior(sde_name):
  """Neither predictor nor corrector: the 'samples' are the prior draw itself, unchanged."""
  N, shape = 10, (8, 4)
  sde = make_sde(sde_name, N)
  prior_noise = jax.random.normal(jax.random.PRNGKey(0), shape)
  draws = (prior_noise, jnp.zeros((N, 1) + shape), jnp.ones((N,) + shape))
  x, nfe = sampling.pc_sample(None, sde, product_score_fn(sde), shape, predictor="none", corrector="none",
                              draws=draws)
  np.testing.assert_array_equal(x, prior_noise * sde.prior_std())
  assert nfe == 2 * N  # charged as N (n_steps + 1), like the original


def test_wrong_score_fails_the_check(reference):
  """Negative control: the sharpest PC run with a score 10% too small is caught."""
  sde = make_sde("vpsde", 500)
  score_fn = product_score_fn(sde)
  x, _ = jax.jit(lambda key: sampling.pc_sample(key, sde, lambda x, t: 0.9 * score_fn(x, t), (BATCH, 4),
                                                predictor="reverse_diffusion", corrector="ald"))(
      jax.random.PRNGKey(1))
  with pytest.raises(AssertionError, match="do not match"):
    assert_matches_target(x, reference, DISCRETISATION)


# ---- probability flow -------------------------------------------------------------------------------------

# Deterministic Euler steps of the probability-flow ODE have no noise to wash out their O(1/N) error
# (measured for VP reverse diffusion, the worst: 9.6%, 5.0%, 2.9%, 1.5% at N = 250, 500, 1000, 2000), hence
# N = 1000 and a 4% allowance.
# They start from exact p_T samples: the ODE maps p_T onto p_0, and with VE's prior N(0, 10^2) in place of
# p_T (variance 10^2 + 3.6) the flow would carry the mismatch into the samples (measured +3% on the central
# mode's weight at any N). The ODE sampler below starts from p_T for the same reason.
PF_N = 1000
PF_DISCRETISATION = 0.04


@pytest.mark.parametrize("predictor", ["euler_maruyama", "reverse_diffusion"])
@pytest.mark.parametrize("sde_name", SDE_NAMES)
def test_probability_flow_predictor_matches_target(sde_name, predictor, reference):
  sde = make_sde(sde_name, PF_N)
  x_T = sample_product(jax.random.PRNGKey(2), BATCH, sde)
  # no corrector (n_steps = 0); the predictor's noise is unused by the probability flow
  draws = (x_T / sde.prior_std(), jnp.zeros((PF_N, 0, BATCH, 4)), jnp.zeros((PF_N, BATCH, 4)))
  x, _ = jax.jit(lambda d: sampling.pc_sample(None, sde, product_score_fn(sde), (BATCH, 4),
                                              predictor=predictor, corrector="none", n_steps=0,
                                              probability_flow=True, draws=d))(draws)
  assert_matches_target(x, reference, PF_DISCRETISATION, f"{sde_name} {predictor} probability flow")


@pytest.mark.parametrize("sde_name", SDE_NAMES)
def test_ode_sampler_matches_target(sde_name, reference):
  """Adaptive RK at rtol = atol = 1e-5: only p_eps vs p_0 (<= 0.2%) is allowed beyond Monte-Carlo error."""
  sde = make_sde(sde_name, 1000)
  x_T = sample_product(jax.random.PRNGKey(3), BATCH, sde)
  x, nfe = jax.jit(lambda z: sampling.ode_sample(None, sde, product_score_fn(sde), (BATCH, 4), z=z))(x_T)
  assert 0 < int(nfe) < 1000
  assert_matches_target(x, reference, 0.005, f"{sde_name} ODE")


# ---- per-example randomness -------------------------------------------------------------------------------

_SMALL_SDE = make_sde("vpsde", 30)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _small_pc(shape, snr_reduction, sample_offset=0):
  return sampling.pc_sample(jax.random.PRNGKey(4), _SMALL_SDE, gaussian_score_fn(_SMALL_SDE), shape,
                            n_steps=2, snr_reduction=snr_reduction, sample_offset=sample_offset)[0]


def test_per_example_snr_samples_do_not_depend_on_the_batch():
  """Sample b is the same in a batch of 16, in a batch of 8, and in a batch of 8 offset by 8."""
  x16 = np.asarray(_small_pc((16, 3), "per_example"))
  x8, x8_offset = _small_pc((8, 3), "per_example"), _small_pc((8, 3), "per_example", 8)
  np.testing.assert_allclose(x8, x16[:8], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(x8_offset, x16[8:], rtol=1e-6, atol=1e-6)
  assert np.all(np.isfinite(x16)) and np.min(np.abs(x16[:8] - x16[8:])) > 0  # distinct samples


def test_batch_snr_samples_do_depend_on_the_batch():
  """Control: the original's batch-averaged step size couples a sample to its batch-mates."""
  x16 = _small_pc((16, 3), "batch")
  assert np.max(np.abs(np.asarray(_small_pc((8, 3), "batch")) - np.asarray(x16[:8]))) > 1e-3


# ---- no recompilation -------------------------------------------------------------------------------------

def _counting(score_fn):
  """``(counted_fn, counter)``: ``counter[0]`` counts the times ``counted_fn`` was traced (or run eagerly)."""
  counter = [0]

  def counted(x, t):
    counter[0] += 1
    return score_fn(x, t)

  return counted, counter


def _pc_samples(key, sde, score_fn):
  return sampling.pc_sample(key, sde, score_fn, (4, 2), predictor="ancestral_sampling", corrector="langevin",
                            n_steps=3)[0]


def test_pc_sampler_traces_the_score_a_fixed_number_of_times():
  """The loop is a scan: the score is traced once by the corrector and once by the predictor, for N = 5 as
  for N = 50, and not again when the jitted sampler runs a second time."""
  for N in (5, 50):
    sde = make_sde("vesde", N)
    score_fn, counter = _counting(gaussian_score_fn(sde))
    sample = jax.jit(functools.partial(_pc_samples, sde=sde, score_fn=score_fn))
    sample(jax.random.PRNGKey(0)).block_until_ready()
    assert counter[0] == 2, (N, counter[0])
    sample(jax.random.PRNGKey(1)).block_until_ready()
    assert counter[0] == 2, "calling the jitted sampler again retraced the score"


def test_samplers_do_not_retrace():
  sde = make_sde("vpsde", 30)
  score_fn, counter = _counting(gaussian_score_fn(sde))
  sampler = sampling.make_pc_sampler(sde, score_fn, (4, 2))
  for offset in (0, 4, 8):  # the offset is a traced argument, not a static one
    sampler(jax.random.PRNGKey(offset), sample_offset=offset)[0].block_until_ready()
  assert counter[0] == 2  # corrector and predictor, traced once

  @jax.jit
  @chex.assert_max_traces(n=1)
  def sample(key):
    return sampling.pc_sample(key, sde, gaussian_score_fn(sde), (4, 2))[0]

  for seed in range(3):
    sample(jax.random.PRNGKey(seed)).block_until_ready()  # a retrace raises AssertionError

  ode_score_fn, ode_counter = _counting(gaussian_score_fn(sde))
  ode_sampler = sampling.make_ode_sampler(sde, ode_score_fn, (4, 2))
  ode_sampler(jax.random.PRNGKey(0))[0].block_until_ready()
  first = ode_counter[0]
  ode_sampler(jax.random.PRNGKey(1))[0].block_until_ready()
  assert ode_counter[0] == first


def test_ode_traces_do_not_depend_on_the_number_of_steps():
  sde = make_sde("vpsde", 30)
  traces, nfes = [], []
  for tol in (1e-2, 1e-6):
    score_fn, counter = _counting(gaussian_score_fn(sde))
    solve = functools.partial(sampling.ode_sample, None, sde, score_fn, (4, 2), rtol=tol, atol=tol)
    _, nfe = jax.jit(lambda z, solve=solve: solve(z=z))(jnp.ones((4, 2)))
    traces.append(counter[0])
    nfes.append(int(nfe))
  assert nfes[1] > 2 * nfes[0]  # really more steps ...
  assert traces[0] == traces[1]  # ... with the same number of traces


# ---- ODE NFE ----------------------------------------------------------------------------------------------

# One solver of each kind by default (fixed-step only; two-stage; FSAL with 4, 7 and 14 stages); all eight
# with SCORE_JAX_SLOW=1.
_NFE_DEFAULT_SOLVERS = ("euler", "heun", "bosh3", "tsit5", "dopri8")


@pytest.mark.parametrize("solver", [s if s in _NFE_DEFAULT_SOLVERS else pytest.param(s, marks=pytest.mark.slow)
                                    for s in sorted(sampling.ODE_SOLVERS)])
def test_solve_ode_nfe_counts_vector_field_evaluations(solver):
  """The reported NFE is the number of evaluations: with fixed steps, and adaptively with rejected steps
  included (a sharp bump forces some)."""
  tick, counter = evaluation_counter()

  def vector_field(t, y):
    tick()
    return -y + 20.0 * jnp.exp(-(((t - 1.0) / 0.05) ** 2))

  runs = [dict(steps=7)] + ([] if solver == "euler" else [dict(rtol=1e-4, atol=1e-4)])
  for kwargs in runs:
    counter[0] = 0
    solve = functools.partial(sampling.solve_ode, vector_field, solver=solver, **kwargs)
    y, nfe = jax.jit(lambda y0, solve=solve: solve(y0, 0.0, 2.0))(jnp.ones((3,)))
    jax.block_until_ready(y)
    assert int(nfe) == counter[0] >= 7, kwargs


@pytest.mark.slow  # 5 s; the fixed-step NFE counts stay in the default suite
def test_fixed_step_ode_converges_with_the_order_of_its_solver():
  """Fixed-step probability-flow ODE solves approach a tight adaptive solve with their solvers' orders
  (float64, so that the errors of the higher orders stay above rounding)."""
  with jax.enable_x64(True):
    sde = make_sde("vpsde", 30)
    score_fn = gaussian_score_fn(sde)
    z = jax.random.normal(jax.random.PRNGKey(3), (4, 2), jnp.float64)
    exact, _ = sampling.ode_sample(None, sde, score_fn, (4, 2), z=z, rtol=1e-10, atol=1e-10)
    for solver, order in (("euler", 1), ("heun", 2)):
      errors = [float(jnp.max(jnp.abs(sampling.ode_sample(None, sde, score_fn, (4, 2), z=z, solver=solver,
                                                           steps=n)[0] - exact))) for n in (32, 64, 128)]
      slopes = -np.diff(np.log(errors)) / np.log(2.0)
      assert abs(slopes.mean() - order) < 0.2, (solver, errors, slopes)


@pytest.mark.parametrize("solver,denoise", [("tsit5", True), ("dopri5", False)])
def test_ode_sample_nfe_counts_score_evaluations(solver, denoise):
  """``ode_sample``'s NFE is its number of score evaluations (plus one for the final denoising step)."""
  sde = make_sde("subvpsde", 30)
  tick, counter = evaluation_counter()
  exact = gaussian_score_fn(sde)

  def score_fn(x, t):
    tick()
    return exact(x, t)

  x, nfe = sampling.ode_sample(jax.random.PRNGKey(0), sde, score_fn, (4, 2), solver=solver, denoise=denoise)
  jax.block_until_ready(x)
  assert int(nfe) == counter[0] > 7
