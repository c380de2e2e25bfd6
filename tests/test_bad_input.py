"""Bad input raises ValueError whose message names the bad value and what was expected (STYLE.md), before
any long work starts."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import gmm, likelihood, losses, sampling, sde_lib

VE = sde_lib.VESDE(N=20)
VP = sde_lib.VPSDE(N=30)
X = jnp.ones((4, 2))
T4 = jnp.full((4,), 0.5)


def score_fn(x, t):
  return -x


def never_called(x, t):
  raise AssertionError("the score function was called before the bad input was reported")


def q(text):
  """``text`` as a literal regex."""
  return re.escape(text)


CASES = {
    # names: predictors, correctors, SDEs, losses, divergences, solvers
    "unknown predictor": (
        lambda: sampling.get_predictor("foo"),
        q("Unknown predictor 'foo'; expected one of ['ancestral_sampling', 'euler_maruyama', 'none', "
          "'reverse_diffusion']")),
    "unknown corrector": (lambda: sampling.get_corrector("foo"),
                          q("Unknown corrector 'foo'; expected one of ['ald', 'langevin', 'none']")),
    "unknown SDE": (lambda: sde_lib.get_sde("foo"),
                    q("Unknown SDE 'foo'; expected one of ['subvpsde', 'vesde', 'vpsde']")),
    "unknown loss": (
        lambda: losses.make_loss_fn("foo", VE),
        q("Unknown loss 'foo'; expected one of ('dsm', 'smld', 'ddpm', 'ism', 'ssm', 'ssm_vr')")),
    "unknown noise-conditional loss": (
        lambda: losses.make_noise_conditional_loss_fn(VE, "dsm"),
        q("Unknown noise-conditional loss 'dsm'; expected 'ism', 'ssm' or 'ssm_vr'")),
    "unknown divergence": (
        lambda: likelihood.log_likelihood(None, VP, never_called, X, divergence="foo"),
        q("Unknown divergence 'foo'; expected one of "
          "('hutchinson_rademacher', 'hutchinson_gaussian', 'exact')")),
    "unknown ODE solver": (
        lambda: sampling.ode_sample(jax.random.PRNGKey(0), VP, never_called, (4, 2), solver="rk4"),
        q("Unknown ODE solver 'rk4'; expected one of ['bosh3', 'dopri5', 'dopri8', 'euler', 'heun', 'midpoint', "
          "'ralston', 'tsit5']")),
    "adaptive Euler": (
        lambda: sampling.ode_sample(jax.random.PRNGKey(0), VP, never_called, (4, 2), solver="euler"),
        q("ODE solver 'euler' has no error estimate, so it cannot choose its step size")),
    "negative ODE steps": (
        lambda: sampling.ode_sample(jax.random.PRNGKey(0), VP, never_called, (4, 2), steps=-3),
        q("ODE steps must be an integer >= 0 (0 = adaptive step size), got -3")),
    "unknown ODE solver (likelihood)": (
        lambda: likelihood.log_likelihood(None, VP, never_called, X, divergence="exact", solver="rk45"),
        q("Unknown ODE solver 'rk45'; expected one of ['bosh3', 'dopri5', 'dopri8', 'euler', 'heun', 'midpoint', "
          "'ralston', 'tsit5']")),
    "unknown snr reduction": (
        lambda: sampling.pc_sample(jax.random.PRNGKey(0), VP, never_called, (4, 2), snr_reduction="mean"),
        q("snr_reduction must be one of ('batch', 'per_example'), got 'mean'")),
    # ranges of the SDE parameters
    "negative sigma_min": (lambda: sde_lib.VESDE(sigma_min=-1), q("VESDE: sigma_min must be > 0, got -1")),
    "inverted sigmas": (lambda: sde_lib.VESDE(sigma_min=1, sigma_max=0.5),
                        q("VESDE: expected sigma_min < sigma_max, got sigma_min=1, sigma_max=0.5")),
    "equal sigmas": (lambda: sde_lib.VESDE(sigma_min=2.0, sigma_max=2.0),
                     q("VESDE: expected sigma_min < sigma_max, got sigma_min=2.0, sigma_max=2.0")),
    "infinite sigma_max": (lambda: sde_lib.VESDE(sigma_max=float("inf")),
                           q("VESDE: sigma_min=0.01 and sigma_max=inf must be finite numbers")),
    "inverted betas": (lambda: sde_lib.VPSDE(beta_min=20, beta_max=0.1),
                       q("VPSDE: expected beta_min < beta_max, got beta_min=20, beta_max=0.1")),
    "negative beta_min": (lambda: sde_lib.subVPSDE(beta_min=-0.1),
                          q("subVPSDE: beta_min must be > 0, got -0.1")),
    "N = 0": (lambda: sde_lib.VESDE(N=0),
              q("N must be a positive integer number of discretisation steps, got 0")),
    "N not an integer": (lambda: sde_lib.VPSDE(N=100.0),
                         q("N must be a positive integer number of discretisation steps, got 100.0")),
    "get_sde N = 0": (lambda: sde_lib.get_sde("vpsde", N=0),
                      q("N must be a positive integer number of discretisation steps, got 0")),
    # times
    "t > T": (lambda: VE.marginal_prob(X, jnp.full((4,), 1.5)),
              q("t must lie in [0, T] = [0, 1.0], got values [1.5")),
    "t < 0": (lambda: VP.sde(X, jnp.array([0.5, -0.1, 0.5, 0.5])),
              q("t must lie in [0, T] = [0, 1.0], got values [-0.1")),
    "t NaN": (lambda: VP.discretize(X, jnp.array([0.5, np.nan, 0.5, 0.5])), q("got values [nan]")),
    "scalar t": (lambda: VE.marginal_prob(X, 1.5),
                 q("t must have shape [B] = (4,) to match x of shape (4, 2), got shape ()")),
    "t of the wrong length": (lambda: VP.marginal_prob(X, jnp.full((3,), 0.5)),
                              q("t must have shape [B] = (4,) to match x of shape (4, 2), got shape (3,)")),
    "t of the wrong length (corrector)": (
        lambda: sampling.LangevinCorrector(VP, score_fn).step(X, jnp.full((5,), 0.5), jnp.zeros((1, 4, 2))),
        q("t must have shape [B] = (4,) to match x of shape (4, 2), got shape (5,)")),
    "eps = 0 (pc)": (lambda: sampling.pc_sample(jax.random.PRNGKey(0), VP, never_called, (4, 2), eps=0.0),
                     q("eps must lie in (0, T) = (0, 1.0), got 0.0")),
    "eps > T (ode)": (lambda: sampling.ode_sample(jax.random.PRNGKey(0), VP, never_called, (4, 2), eps=1.5),
                      q("eps must lie in (0, T) = (0, 1.0), got 1.5")),
    "eps = T (likelihood)": (lambda: likelihood.log_likelihood(None, VP, never_called, X, eps=1.0),
                             q("eps must lie in [0, T) = [0, 1.0), got 1.0")),
    # shapes
    "predictor noise shape": (
        lambda: sampling.ReverseDiffusionPredictor(VP, score_fn).step(X, T4, jnp.zeros((4, 3))),
        q("predictor noise must have shape (4, 2), got (4, 3)")),
    "predictor noise shape (ancestral)": (
        lambda: sampling.AncestralSamplingPredictor(VE, score_fn).step(X, T4, jnp.zeros((2,))),
        q("predictor noise must have shape (4, 2), got (2,)")),
    "predictor noise shape (euler_maruyama)": (
        lambda: sampling.EulerMaruyamaPredictor(VE, score_fn).step(X, T4, jnp.zeros((1, 4, 2))),
        q("predictor noise must have shape (4, 2), got (1, 4, 2)")),
    "corrector noise shape": (
        lambda: sampling.LangevinCorrector(VP, score_fn, 0.16, 2).step(X, T4, jnp.zeros((1, 4, 2))),
        q("corrector noise must have shape (2, 4, 2), got (1, 4, 2)")),
    "corrector noise shape (ald)": (
        lambda: sampling.AnnealedLangevinDynamics(VE, score_fn).step(X, T4, jnp.zeros((4, 2))),
        q("corrector noise must have shape (1, 4, 2), got (4, 2)")),
    "z shape (ode)": (lambda: sampling.ode_sample(None, VP, never_called, (4, 2), z=jnp.zeros((3, 2))),
                      q("z (prior sample) noise must have shape (4, 2), got (3, 2)")),
    "draws shape (pc)": (
        lambda: sampling.pc_sample(None, VP, never_called, (4, 2), n_steps=1, draws=(
            jnp.zeros((4, 2)), jnp.zeros((VP.N, 2, 4, 2)), jnp.zeros((VP.N, 4, 2)))),
        q("corrector noise must have shape (30, 1, 4, 2), got (30, 2, 4, 2)")),
    "empty batch (pc)": (lambda: sampling.pc_sample(jax.random.PRNGKey(0), VP, never_called, (0, 2)),
                         q("shape must be (B, ...) with B >= 1, got (0, 2)")),
    "x without batch (likelihood)": (
        lambda: likelihood.log_likelihood(None, VP, never_called, jnp.ones((4,))),
        q("x must be a batch [B, ...] with at least one data dimension, got shape (4,)")),
    "z shape (dsm)": (lambda: losses.sde_loss(VP, score_fn, X, T4, jnp.zeros((4, 3))),
                      q("z must have the shape of x (4, 2), got (4, 3)")),
    "v shape (ssm)": (lambda: losses.ssm_loss(lambda x: -x, X, jnp.zeros((4, 3))),
                      q("v must have shape [B, D] = (4, 2) or [M, B, D], got (4, 3)")),
    "x shape (ism)": (lambda: losses.ism_loss(lambda x: -x, jnp.ones((4, 2, 2))),
                      q("ism_loss expects x of shape [B, D], got (4, 2, 2)")),
    "labels shape (smld)": (lambda: losses.smld_loss(VE, score_fn, X, jnp.zeros((3,), jnp.int32), X),
                            q("labels must have shape [B] = (4,), got (3,)")),
    "float labels (ddpm)": (lambda: losses.ddpm_loss(VP, score_fn, X, jnp.zeros((4,)), X),
                            q("labels must be integer timesteps in [0, 30), got dtype float32")),
    # corrector and sampler settings
    "negative n_steps": (lambda: sampling.get_corrector("langevin")(VP, score_fn, 0.16, -1),
                         q("n_steps must be a non-negative integer number of corrector steps, got -1")),
    "negative n_steps (pc)": (
        lambda: sampling.pc_sample(jax.random.PRNGKey(0), VP, never_called, (4, 2), n_steps=-2),
        q("n_steps must be a non-negative integer number of corrector steps, got -2")),
    "negative snr": (lambda: sampling.get_corrector("ald")(VE, score_fn, -0.1, 1),
                     q("snr must be a finite number >= 0, got -0.1")),
    "ancestral probability flow": (lambda: sampling.get_predictor("ancestral_sampling")(VP, score_fn, True),
                                   q("Predictor 'ancestral_sampling' has no probability-flow variant")),
    "ancestral sub-VP": (lambda: sampling.get_predictor("ancestral_sampling")(sde_lib.subVPSDE(), score_fn),
                         q("Predictor 'ancestral_sampling' is defined for VESDE and VPSDE, not subVPSDE")),
    "zero rtol": (lambda: sampling.solve_ode(lambda t, y: -y, jnp.ones(2), 0.0, 1.0, rtol=0.0, atol=1e-5),
                  q("rtol and atol must be > 0, got rtol=0.0, atol=1e-05")),
    # losses that do not fit the SDE
    "smld with VP": (lambda: losses.make_loss_fn("smld", VP), q("SMLD training needs a VESDE, got VPSDE")),
    "ddpm with VE": (lambda: losses.make_loss_fn("ddpm", VE), q("DDPM training needs a VPSDE, got VESDE")),
    "likelihood weighting with ism": (
        lambda: losses.make_loss_fn("ism", VP, likelihood_weighting=True),
        q("likelihood_weighting is only defined for the continuous 'dsm' loss, not 'ism'")),
    # data ranges and mixtures
    "inverted data range": (lambda: likelihood.bpd_offset(1.0, 0.0),
                            q("data_max must exceed data_min, got [1.0, 0.0]")),
    "mixture weights": (
        lambda: gmm.GaussianMixture(np.array([0.5, 0.6]), np.zeros((2, 2)), np.stack([np.eye(2)] * 2)),
        q("weights must be positive and sum to 1, got [0.5, 0.6]")),
    "mixture shapes": (lambda: gmm.GaussianMixture(np.array([1.0]), np.zeros((1, 2)), np.eye(2)),
                       q("expected weights [K], means [K, D], covs [K, D, D]; got (1,), (1, 2), (2, 2)")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_raises_value_error_naming_it(name):
  fn, message = CASES[name]
  with pytest.raises(ValueError, match=message):
    fn()


def test_wrong_types_raise_type_error():
  with pytest.raises(TypeError, match=q("sde must be an sde_lib.SDE, got str")):
    sampling.ReverseDiffusionPredictor("vpsde", score_fn)
  with pytest.raises(TypeError, match=q("sde must be an sde_lib.SDE, got dict")):
    sampling.LangevinCorrector({}, score_fn)
