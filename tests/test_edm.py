"""score_jax.edm: parity with NVlabs/edm's own outputs, and oracles with closed-form denoisers.

Parity: ``../shared/fixtures/edm/`` holds EDM's precond coefficients, losses (every draw saved) and sampler
outputs (``edm_sampler``, ``ablation_sampler``) on analytic denoisers (its README). Each case is called with
exactly its ``params`` in float32 and compared with EDM's float64 result at the fixtures' tolerances.

Oracles: the target is the 4-D product ``N(0, TAU^2 I_2) x gmm.default_mixture()`` of test_sampling_oracle,
whose EDM denoiser ``E[y | y + sigma n]`` is written here in closed form. Sampled with it, every EDM sampler
(deterministic and stochastic, and the ablation sampler's original VP / VE settings) must give the target's
moments; the score <-> denoiser bridge must reproduce the exact scores of VE / VP / sub-VP; the existing
samplers must sample the target through the bridge; the exact denoiser must minimise EDM's losses.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import SHARED
from oracles import (
  BATCH,
  MIXTURE,
  SDE_NAMES,
  TAU,
  assert_matches_target,
  make_sde,
  product_score_fn,
  sample_product,
  statistics,
)

from score_jax import edm, fast_sampling, sampling, sde_lib

FIXTURES = SHARED / "fixtures" / "edm"
SIGMA_GRID = np.array([0.002, 0.005, 0.01, 0.03, 0.1, 0.25, 0.5, 0.8, 1.3, 3, 7, 15, 40, 80], np.float32)


def _cases():
  path = FIXTURES / "index.json"
  if not path.exists():
    return [pytest.param(None, marks=pytest.mark.skip(reason=f"EDM fixtures {path} not found (../shared absent)"))]
  cases = [c for c in json.loads(path.read_text())["cases"] if c.get("checked", True) and c.get("kind") != "iddpm"]
  return [pytest.param(c, id=c["name"]) for c in cases]


def _rel_max(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  assert got.shape == want.shape, (got.shape, want.shape)
  return np.max(np.abs(got - want)) / np.max(np.abs(want))


def _fixture_denoiser(name, p):
  """The fixtures' analytic denoisers (README (b)); sigma [B]."""
  col = lambda sigma: jnp.reshape(sigma, (-1, 1, 1, 1))
  if name == "gauss":
    return lambda x, sigma: x * p["s"] ** 2 / (p["s"] ** 2 + col(sigma) ** 2)
  return lambda x, sigma: jnp.tanh(x / jnp.sqrt(p["a"] ** 2 + col(sigma) ** 2)) / (1 + 0.1 * col(sigma))


def _diagonal_mixture_denoiser(weights, means, variances):
  """Exact denoiser of ``sum_k w_k N(mu_k, diag(v_k))`` (means / variances ``[K, ...]``), README (c)."""
  log_w = jnp.log(jnp.asarray(weights, jnp.float32))
  mu, v = jnp.asarray(means, jnp.float32), jnp.asarray(variances, jnp.float32)

  def one(x, sigma):
    var = v + sigma**2  # [K, ...]
    axes = tuple(range(1, var.ndim))
    diff = x[None] - mu
    log_r = log_w - 0.5 * jnp.sum(diff**2 / var + jnp.log(2 * jnp.pi * var), axis=axes)
    return jnp.tensordot(jax.nn.softmax(log_r), mu + v / var * diff, axes=1)

  return jax.vmap(one)


@pytest.mark.parametrize("case", _cases())
def test_parity_with_edm(case):
  f = np.load(FIXTURES / case["file"])
  group, params = case["group"], case["params"]
  f32 = lambda k: jnp.asarray(f[k], jnp.float32)
  if group == "precond":
    kind = case["kind"]
    coeffs = edm.precond_coefficients(kind, jnp.asarray(SIGMA_GRID), **params)
    for name, got in zip(("c_skip", "c_out", "c_in", "c_noise"), coeffs):
      want = f[f"{name}_f64"]
      if name == "c_noise" and kind == "vp":  # float32 log(1 + sigma^2) cannot resolve small sigma (README)
        err = _rel_max(got, want)
      else:
        err = np.max(np.abs(np.asarray(got, np.float64) - want) / np.abs(want))
      assert err <= 1e-5, f"{case['name']} {name}: {err:.2e}"
    x = f32("x_nhwc")
    F = lambda z, c: jnp.tanh(z) * (1 + 0.01 * jnp.reshape(c, (-1, 1, 1, 1)))
    D = edm.precondition(kind, F, **params)(x, jnp.asarray(SIGMA_GRID))
    assert _rel_max(D, f["D_nhwc_f64"]) <= 1e-5
  elif group == "loss":
    denoise_fn = _fixture_denoiser(case["denoiser"], case["denoiser_params"])
    got = edm.loss(case["kind"], denoise_fn, f32("y_nhwc"), f32("u"), f32("noise_nhwc"), **params)
    assert got.shape == f["y_nhwc"].shape
    assert _rel_max(got, f["loss_nhwc_f64"]) <= 1e-5
  else:
    denoise_fn = _diagonal_mixture_denoiser(f["mix_weights"], f["mix_means_nhwc"], f["mix_vars_nhwc"])
    sampler = edm.edm_sampler if group == "edm_sampler" else edm.ablation_sampler
    got = sampler(denoise_fn, f32("latents_nhwc"), f32("churn_noise_nhwc"), **params)
    assert _rel_max(got, f["samples_nhwc"]) <= 1e-4
    if group == "edm_sampler":
      np.testing.assert_allclose(edm.edm_time_steps(params["num_steps"], **{
          k: v for k, v in params.items() if k in ("sigma_min", "sigma_max", "rho")}), f["t_steps"], rtol=1e-12)
    else:
      t_steps, _ = edm.ablation_time_steps(**{k: v for k, v in params.items() if k not in (
          "solver", "scaling", "alpha", "S_churn", "S_min", "S_max", "S_noise")})
      # iDDPM's alpha_bar is float32 in EDM; numpy's float32 sin differs from torch's by an ulp here and there
      rtol = 1e-6 if params.get("discretization") == "iddpm" else 1e-10
      np.testing.assert_allclose(t_steps, f["t_steps"], rtol=rtol, atol=1e-300)
    assert edm.sampler_nfe(params["num_steps"], params.get("solver", "heun")) == case["nfe"]


# ---- the closed-form denoiser of the product target ------------------------------------------------------

_EIGVALS, _EIGVECS = np.linalg.eigh(MIXTURE.covs)


def product_denoiser(x, sigma):
  """``E[y | y + sigma n]`` for the 4-D product target: ``TAU^2 / (TAU^2 + sigma^2) x`` on the Gaussian block,
  ``sum_k r_k(x) [mu_k + C_k (C_k + sigma^2 I)^-1 (x - mu_k)]`` on the mixture block (C_k = U diag(lam) U^T)."""
  U, lam = jnp.asarray(_EIGVECS, jnp.float32), jnp.asarray(_EIGVALS, jnp.float32)
  mu, log_w = jnp.asarray(MIXTURE.means, jnp.float32), jnp.log(jnp.asarray(MIXTURE.weights, jnp.float32))

  def one(x, sigma):
    g, m = x[:2], x[2:]
    proj = jnp.einsum("kde,kd->ke", U, m[None] - mu)  # [K, 2] in each component's eigenbasis
    var = lam + sigma**2
    log_r = log_w - 0.5 * jnp.sum(proj**2 / var + jnp.log(2 * jnp.pi * var), axis=1)
    shrunk = jnp.einsum("kde,ke->kd", U, lam / var * proj)  # C (C + sigma^2)^-1 (x - mu)
    m_hat = jnp.tensordot(jax.nn.softmax(log_r), mu + shrunk, axes=1)
    return jnp.concatenate([TAU**2 / (TAU**2 + sigma**2) * g, m_hat])

  return jax.vmap(one)(x, jnp.broadcast_to(sigma, x.shape[:1]))


@pytest.fixture(scope="module")
def reference():
  f = statistics(sample_product(jax.random.PRNGKey(12345), 200_000))
  return f.mean(0), f.var(0) / len(f), np.sqrt(np.mean(f**2, axis=0))


def _draws(seed, num_steps, n=BATCH):
  return edm.edm_draws(jax.random.PRNGKey(seed), (n, 4), num_steps)


def test_denoiser_is_tweedie_of_the_exact_score():
  """``denoiser_from_score`` of each SDE's exact score is the closed-form denoiser; ``score_from_denoiser``
  inverts it (the change of variables y = x / a, sigma = s / a)."""
  key_x, key_s = jax.random.split(jax.random.PRNGKey(3))
  sigma = jnp.exp(jax.random.uniform(key_s, (64,), minval=np.log(0.01), maxval=np.log(50.0)))
  y = sample_product(key_x, 64) + sigma[:, None] * jax.random.normal(key_s, (64, 4))
  want = jax.jit(product_denoiser)(y, sigma)
  # from t = 0.01: sub-VP's s(t) = 1 - exp(-int beta) loses float32 digits below
  t = jax.random.uniform(key_s, (64,), minval=1e-2, maxval=1.0)
  x = sample_product(key_x, 64) * 2.0
  for name in SDE_NAMES:
    sde = make_sde(name, 100)
    D = jax.jit(edm.denoiser_from_score(sde, product_score_fn(sde)))
    np.testing.assert_allclose(D(y, sigma), want, atol=2e-4 * float(jnp.max(jnp.abs(want))), err_msg=name)
    score = jax.jit(edm.score_from_denoiser(sde, product_denoiser))(x, t)
    np.testing.assert_allclose(score, jax.jit(product_score_fn(sde))(x, t), rtol=2e-3, atol=2e-4, err_msg=name)


@pytest.mark.parametrize("churn", [0.0, 40.0], ids=["deterministic", "stochastic"])
def test_edm_sampler_matches_target(churn, reference):
  """Algorithm 2 with the exact denoiser gives the target's moments. At EDM's 18 steps Heun still inflates
  the variance of the TAU = 0.5 Gaussian by 11% (test_heun_converges_at_second_order), so the deterministic
  run takes 64 steps (0.7%); the churn's error falls slower (at S_churn = 40, Mahalanobis^2 2.39 / 2.18 /
  2.08 at 18 / 32 / 128 steps vs 2.00 exact), so the stochastic run takes 128."""
  num_steps = 64 if churn == 0 else 128
  kwargs = dict(num_steps=num_steps, S_churn=churn, S_min=0.05, S_max=50.0) if churn else dict(num_steps=num_steps)
  latents, churn_noise = _draws(1, num_steps)
  x = jax.jit(lambda z, e: edm.edm_sampler(product_denoiser, z, e, **kwargs))(latents, churn_noise)
  assert_matches_target(x, reference, 0.005, f"edm_sampler S_churn={churn}")


@pytest.mark.parametrize("setting", [
    dict(solver="euler", discretization="vp", schedule="vp", scaling="vp", num_steps=256),
    # the original VE sampler is first order in t = sigma^2 and slow to converge (EDM Fig. 2): 1024 steps
    dict(solver="euler", discretization="ve", schedule="ve", scaling="none", num_steps=1024),
    dict(solver="heun", discretization="vp", schedule="vp", scaling="vp", num_steps=64, S_churn=10.0, S_min=0.05,
         S_max=50.0),
    dict(solver="heun", discretization="iddpm", schedule="linear", scaling="none", num_steps=64),
], ids=["original_vp", "original_ve", "heun_vp_churn", "heun_iddpm"])
def test_ablation_sampler_matches_target(setting, reference):
  latents, churn_noise = _draws(2, setting["num_steps"])
  x = jax.jit(lambda z, e: edm.ablation_sampler(product_denoiser, z, e, **setting))(latents, churn_noise)
  assert_matches_target(x, reference, 0.01, f"ablation_sampler {setting}")


def test_existing_samplers_run_an_edm_denoiser(reference):
  """An EDM denoiser as a VE score model (``score_from_denoiser``) samples with pc, ode and heun."""
  sde = sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0, N=500)
  score_fn = edm.score_from_denoiser(sde, product_denoiser)
  key = jax.random.PRNGKey(4)
  x_heun, _ = jax.jit(lambda k: fast_sampling.fast_sample("heun", k, sde, score_fn, (BATCH, 4), steps=64))(key)
  assert_matches_target(x_heun, reference, 0.005, "heun on an EDM denoiser")
  x_pc, _ = jax.jit(lambda k: sampling.pc_sample(k, sde, score_fn, (BATCH, 4), corrector="none"))(key)
  assert_matches_target(x_pc, reference, 0.02, "pc (reverse diffusion) on an EDM denoiser")


def test_edm_sampler_runs_score_models_of_every_sde(reference):
  """Each SDE's exact score, through ``denoiser_from_score``, sampled by Algorithm 2 within its sigma range."""
  latents, churn_noise = _draws(5, 64)
  for name in SDE_NAMES:
    sde = make_sde(name, 100)
    lo, hi = edm.sde_sigma_range(sde, 1e-3)
    D = edm.denoiser_from_score(sde, product_score_fn(sde))
    sampler = functools.partial(edm.edm_sampler, D, num_steps=64, sigma_min=max(lo, 0.002), sigma_max=min(hi, 80.0))
    x = jax.jit(sampler)(latents, churn_noise)
    assert_matches_target(x, reference, 0.01, f"edm_sampler on the {name} score")


def test_heun_converges_at_second_order():
  """On Gaussian data the sampler is linear, ``x_N = c_N z``: Heun's error in ``c`` falls ~4x per doubling of
  the steps and Euler's ~2x, towards the exact ``c = sigma_max TAU / sqrt(TAU^2 + sigma_max^2)``."""
  gauss = lambda x, sigma: x * TAU**2 / (TAU**2 + sigma[:, None] ** 2)
  exact = 80.0 * TAU / np.sqrt(TAU**2 + 80.0**2)
  z = jnp.ones((1, 1))
  for solver, order in (("heun", 2), ("euler", 1)):
    errors = [abs(float(edm.ablation_sampler(gauss, z, jnp.zeros((n, 1, 1)), num_steps=n, solver=solver)[0, 0])
                  - exact) for n in (16, 32, 64)]
    ratios = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(np.abs(ratios - order) < 0.35), (solver, errors, ratios)
  np.testing.assert_allclose(edm.edm_sampler(gauss, z, jnp.zeros((64, 1, 1)), num_steps=64),
                             edm.ablation_sampler(gauss, z, jnp.zeros((64, 1, 1)), num_steps=64), rtol=1e-6)


def test_samples_do_not_depend_on_the_batch():
  gauss = lambda x, sigma: x * TAU**2 / (TAU**2 + sigma[:, None] ** 2)
  sample = jax.jit(lambda n, offset: edm.edm_sample(jax.random.PRNGKey(6), gauss, (n, 4), num_steps=5, S_churn=5.0,
                                                    sample_offset=offset), static_argnums=0)
  big = sample(8, 0)
  np.testing.assert_allclose(big, jnp.concatenate([sample(4, 0), sample(4, 4)]), rtol=1e-5, atol=1e-6)
  # the prior draw is the one of the PC and fast samplers
  z = edm.edm_draws(jax.random.PRNGKey(6), (4, 4), 3)[0]
  x_pc, _ = sampling.pc_sample(jax.random.PRNGKey(6), make_sde("vesde", 1), lambda x, t: jnp.zeros_like(x), (4, 4),
                               predictor="none", corrector="none", denoise=False)
  np.testing.assert_allclose(x_pc, z * make_sde("vesde", 1).prior_std(), rtol=1e-6)


# ---- losses --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", edm.LOSSES)
def test_exact_denoiser_minimises_the_loss(kind):
  """The exact denoiser's mean EDM loss is below that of every perturbed denoiser (common random numbers)."""
  n = 20_000
  key_y, key_u, key_n = jax.random.split(jax.random.PRNGKey(7), 3)
  y = sample_product(key_y, n)
  u = (jax.random.normal if kind == "edm" else jax.random.uniform)(key_u, (n,))
  noise = jax.random.normal(key_n, y.shape)
  perturbations = {
      "scale": lambda x, s: product_denoiser(x, s) * 1.05,
      "toward x": lambda x, s: product_denoiser(x, s) + 0.1 * (x - product_denoiser(x, s)),
      "away from x": lambda x, s: product_denoiser(x, s) - 0.1 * (x - product_denoiser(x, s)),
      "shift": lambda x, s: product_denoiser(x, s) + 0.05 * jnp.tanh(x[:, ::-1]),
  }
  mean_losses = jax.jit(lambda *a: [jnp.mean(edm.loss(kind, D, *a)) for D in (product_denoiser,
                                                                                   *perturbations.values())])
  best, *others = (float(v) for v in mean_losses(y, u, noise))
  for name, value in zip(perturbations, others):
    assert value > best, f"{kind}: perturbation {name!r} lowers the loss ({value} <= {best})"


def test_loss_sigma_distributions():
  u = jnp.linspace(0.0, 0.999, 1001)
  sigma, _ = edm.loss_sigma("ve", u)
  assert abs(float(sigma[0]) - 0.02) < 1e-7 and float(sigma[-1]) < 100
  sigma_vp, w = edm.loss_sigma("vp", u)
  np.testing.assert_allclose(w, 1 / sigma_vp**2, rtol=1e-6)
  assert np.all(np.diff(np.asarray(sigma_vp)) < 0)  # u = 0 is t = 1 (the largest noise)
  z = jax.random.normal(jax.random.PRNGKey(0), (100_000,))
  log_sigma = np.log(np.asarray(edm.loss_sigma("edm", z)[0]))
  assert abs(log_sigma.mean() + 1.2) < 0.02 and abs(log_sigma.std() - 1.2) < 0.02


def test_make_loss_fn_draws_per_example():
  loss_fn = jax.jit(lambda y: edm.make_loss_fn("edm")(jax.random.PRNGKey(1), product_denoiser, y))
  y = sample_product(jax.random.PRNGKey(0), 8)
  full = loss_fn(y)
  assert full.shape == y.shape and np.all(np.isfinite(full))
  np.testing.assert_allclose(loss_fn(y[:4]), full[:4], rtol=1e-5)


# ---- guidance, EMA, bad input ------------------------------------------------------------------------------

def test_guidance_weights():
  """w = 1 is the conditional denoiser, w = 0 the unconditional one, and the guided sampler with w = 1
  gives the conditional sampler's samples draw for draw."""
  cond = _diagonal_mixture_denoiser(np.ones(1), MIXTURE.means[:1], np.full((1, 2), 0.1))
  uncond = _diagonal_mixture_denoiser(np.full(2, 0.5), MIXTURE.means[:2], np.full((2, 2), 0.1))
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (16, 2))
  sigma = jnp.full((16,), 0.7)
  guided = lambda w: jax.jit(edm.guided_denoiser(cond, uncond, w))
  np.testing.assert_allclose(guided(1.0)(x, sigma), cond(x, sigma), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(guided(0.0)(x, sigma), uncond(x, sigma), rtol=1e-6)
  latents, churn_noise = edm.edm_draws(jax.random.PRNGKey(1), (512, 2), 18)
  sample = jax.jit(lambda w: edm.edm_sampler(edm.guided_denoiser(cond, uncond, w), latents, churn_noise,
                                             S_churn=10.0))
  plain = jax.jit(lambda: edm.edm_sampler(cond, latents, churn_noise, S_churn=10.0))()
  np.testing.assert_allclose(sample(1.0), plain, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(plain).mean(0), MIXTURE.means[0], atol=4 * np.sqrt(0.1 / 512))
  # guidance past 1 sharpens the class: samples closer to its mean than the conditional ones
  spread = lambda x: float(np.mean(np.sum((np.asarray(x) - MIXTURE.means[0]) ** 2, axis=1)))
  assert spread(sample(3.0)) < spread(plain)


def test_guided_score_is_the_guided_denoiser_and_labels_drop():
  """Guidance in the score (for the SDE samplers) equals guidance in the denoiser under the bridge; label
  dropout sends a fraction p of the labels to the null class."""
  sde = make_sde("vpsde", 100)
  cond = _diagonal_mixture_denoiser(np.ones(1), MIXTURE.means[:1], np.full((1, 2), 0.1))
  uncond = _diagonal_mixture_denoiser(np.full(2, 0.5), MIXTURE.means[:2], np.full((2, 2), 0.1))
  x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (16, 2))
  t = jnp.linspace(0.05, 1.0, 16)
  via_score = edm.guided_score(edm.score_from_denoiser(sde, cond), edm.score_from_denoiser(sde, uncond), 2.5)
  via_denoiser = edm.score_from_denoiser(sde, edm.guided_denoiser(cond, uncond, 2.5))
  np.testing.assert_allclose(jax.jit(via_score)(x, t), jax.jit(via_denoiser)(x, t), rtol=1e-4, atol=1e-4)
  u = jax.random.uniform(jax.random.PRNGKey(1), (10_000,))
  labels = jax.random.randint(jax.random.PRNGKey(2), (10_000,), 0, 10)
  dropped = np.asarray(edm.drop_labels(labels, u, 0.1, 10))
  assert abs(np.mean(dropped == 10) - 0.1) < 0.01
  np.testing.assert_array_equal(dropped[dropped != 10], np.asarray(labels)[dropped != 10])


def test_ema_beta_half_life_and_ramp_up():
  # at step 0 the ramp-up makes the average the weights themselves
  assert float(edm.ema_beta(512, 500.0, 0)) == 0.0
  # late in training the half-life is ema_halflife_kimg: beta^(halflife / batch) = 1/2
  beta = float(edm.ema_beta(512, 500.0, 10**6))
  np.testing.assert_allclose(beta ** (500_000 / 512), 0.5, rtol=1e-4)
  # ramp-up: half-life 5% of the images seen
  np.testing.assert_allclose(float(edm.ema_beta(512, 500.0, 1000)), 0.5 ** (512 / (0.05 * 512_000)), rtol=1e-6)
  np.testing.assert_allclose(float(edm.ema_beta(512, 500.0, 1000, None)), 0.5 ** (512 / 500_000), rtol=1e-6)


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="kind 'vq'"):
    edm.precond_coefficients("vq", jnp.ones(3))
  with pytest.raises(ValueError, match="sigma_data"):
    edm.precond_coefficients("vp", jnp.ones(3), sigma_data=0.5)
  with pytest.raises(ValueError, match="churn_noise"):
    edm.edm_sampler(product_denoiser, jnp.zeros((2, 4)), jnp.zeros((3, 2, 4)), num_steps=4)
  with pytest.raises(ValueError, match="discretization"):
    edm.ablation_sampler(product_denoiser, jnp.zeros((2, 4)), jnp.zeros((4, 2, 4)), num_steps=4,
                         discretization="ddim")
  with pytest.raises(ValueError, match="noise of y's shape"):
    edm.loss("edm", product_denoiser, jnp.zeros((2, 4)), jnp.zeros(2), jnp.zeros((2, 3)))
