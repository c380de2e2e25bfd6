"""Score-matching objectives.

Each objective has a pure *core* that takes every random draw explicitly (times ``t`` and the standard
normal ``z``/``noise``/``v``), so results can be compared draw for draw with another implementation, and a
``make_*`` factory returning ``loss_fn(key, score_fn, x)`` that draws them from a key.

Per-example maths is written for one example and batched with ``jax.vmap``. ``reduce_mean=True`` averages
the squared error over data dimensions; ``reduce_mean=False`` takes half its sum, as the original does.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_jax import sde_lib

Array = jax.Array

__all__ = [
    "sde_loss", "smld_loss", "ddpm_loss", "ism_loss", "ssm_loss", "noise_conditional_loss",
    "make_sde_loss_fn", "make_smld_loss_fn", "make_ddpm_loss_fn", "make_noise_conditional_loss_fn",
    "make_loss_fn", "LOSSES",
]

LOSSES = ("dsm", "smld", "ddpm", "ism", "ssm", "ssm_vr")


def _reduce(sq_err: Array, reduce_mean: bool) -> Array:
  """Mean over data dimensions, or half the sum."""
  return jnp.mean(sq_err) if reduce_mean else 0.5 * jnp.sum(sq_err)


def _check_same_shape(name: str, a: Array, x: Array) -> None:
  if jnp.shape(a) != jnp.shape(x):
    raise ValueError(f"{name} must have the shape of x {jnp.shape(x)}, got {jnp.shape(a)}.")


def sde_loss(sde: sde_lib.SDE, score_fn, x: Array, t: Array, z: Array, *, reduce_mean: bool = True,
             likelihood_weighting: bool = False, per_example: bool = False) -> Array:
  """Continuous denoising score matching (eq. 7), averaged over the batch.

  With ``x_t = a(t) x + s(t) z`` the per-example loss is ``|s(t) score(x_t, t) + z|^2`` (the paper's
  weighting ``lambda(t) = s(t)^2``), or with ``likelihood_weighting`` ``g(t)^2 |score(x_t, t) + z / s(t)|^2``
  (Song et al. 2021b, the weighting that bounds the negative log-likelihood).

  Args:
    sde: the forward SDE.
    score_fn: batched ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
    x: data ``[B, ...]``.
    t: times ``[B]`` in ``[0, T]``.
    z: standard normal draws ``[B, ...]`` (scaled by ``s(t)`` here).
    reduce_mean: average (True) or half-sum (False) over data dimensions.
    likelihood_weighting: use ``g(t)^2`` weighting instead of ``s(t)^2``.
    per_example: return each example's loss ``[B]`` instead of their mean.

  Returns:
    Scalar loss (``[B]`` with ``per_example``).
  """
  _check_same_shape("z", z, x)
  mean, std = sde.marginal_prob(x, t)
  x_t = mean + jax.vmap(jnp.multiply)(std, z)
  score = score_fn(x_t, t)

  def one(score, z, std, t):
    if likelihood_weighting:
      g2 = sde.sde_one(jnp.zeros_like(z), t)[1] ** 2
      return _reduce(jnp.square(score + z / std), reduce_mean) * g2
    return _reduce(jnp.square(score * std + z), reduce_mean)

  return _mean_unless(jax.vmap(one)(score, z, std, t), per_example)


def _mean_unless(losses: Array, per_example: bool) -> Array:
  """The batch mean of per-example ``losses [B]``, or the losses themselves with ``per_example``."""
  return losses if per_example else jnp.mean(losses)


def _check_labels(labels: Array, x: Array, N: int) -> None:
  if jnp.shape(labels) != (jnp.shape(x)[0],):
    raise ValueError(f"labels must have shape [B] = ({jnp.shape(x)[0]},), got {jnp.shape(labels)}.")
  if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
    raise ValueError(f"labels must be integer timesteps in [0, {N}), got dtype {jnp.asarray(labels).dtype}.")


def smld_loss(sde: sde_lib.VESDE, model_fn, x: Array, labels: Array, noise: Array, *,
              reduce_mean: bool = False, per_example: bool = False) -> Array:
  """SMLD/NCSN denoising score matching at discrete noise levels (Song & Ermon 2019).

  ``labels`` index the noise levels in DESCENDING order (label 0 = ``sigma_max``), as the NCSN networks
  expect; the per-example loss is ``sigma^2 |model(x + sigma z, label) + z / sigma|^2``.

  Args:
    sde: a ``VESDE`` (its ``discrete_sigmas``).
    model_fn: the raw network ``model_fn(x [B, ...], labels [B]) -> [B, ...]`` (it outputs the score).
    x: data ``[B, ...]``; labels: int ``[B]`` in ``[0, N)``; noise: standard normal ``[B, ...]``.
    per_example: return each example's loss ``[B]`` instead of their mean.
  """
  if not isinstance(sde, sde_lib.VESDE):
    raise ValueError(f"SMLD training needs a VESDE, got {type(sde).__name__}.")
  _check_same_shape("noise", noise, x)
  _check_labels(labels, x, sde.N)
  sigmas = jnp.asarray(sde.discrete_sigmas)[::-1][labels]  # [B], descending order
  scaled_noise = jax.vmap(jnp.multiply)(sigmas, noise)
  score = model_fn(x + scaled_noise, labels)

  def one(score, scaled_noise, sigma):
    target = -scaled_noise / sigma**2
    return _reduce(jnp.square(score - target), reduce_mean) * sigma**2

  return _mean_unless(jax.vmap(one)(score, scaled_noise, sigmas), per_example)


def ddpm_loss(sde: sde_lib.VPSDE, model_fn, x: Array, labels: Array, noise: Array, *,
              reduce_mean: bool = True, per_example: bool = False) -> Array:
  """DDPM's simple loss ``|eps_theta(sqrt(abar) x + sqrt(1 - abar) eps, label) - eps|^2`` (Ho et al. 2020).

  Args:
    sde: a ``VPSDE`` (its discrete ``alphas_cumprod``).
    model_fn: the raw network predicting the noise, ``model_fn(x, labels)``.
    x: data ``[B, ...]``; labels: int ``[B]`` in ``[0, N)``; noise: standard normal ``[B, ...]``.
    per_example: return each example's loss ``[B]`` instead of their mean.
  """
  if not isinstance(sde, sde_lib.VPSDE):
    raise ValueError(f"DDPM training needs a VPSDE, got {type(sde).__name__}.")
  _check_same_shape("noise", noise, x)
  _check_labels(labels, x, sde.N)
  sqrt_abar = jnp.asarray(sde.sqrt_alphas_cumprod)[labels]
  sqrt_1m_abar = jnp.asarray(sde.sqrt_1m_alphas_cumprod)[labels]
  x_t = jax.vmap(lambda a, b, x, n: a * x + b * n)(sqrt_abar, sqrt_1m_abar, x, noise)
  eps = model_fn(x_t, labels)
  return _mean_unless(jax.vmap(lambda e, n: _reduce(jnp.square(e - n), reduce_mean))(eps, noise), per_example)


def _one_example(score_fn) -> Callable[[Array], Array]:
  """``score_fn`` on ``[B, D]`` as a function of one example ``[D]``."""
  return lambda x: score_fn(x[None])[0]


def ism_loss(score_fn, x: Array) -> Array:
  """Implicit score matching (Hyvarinen 2005): ``E[tr(d score / dx) + 1/2 |score|^2]``, exact Jacobian.

  Args:
    score_fn: batched ``score_fn(x [B, D]) -> [B, D]``.
    x: data ``[B, D]``.
  """
  if jnp.ndim(x) != 2:
    raise ValueError(f"ism_loss expects x of shape [B, D], got {jnp.shape(x)}.")
  s_one = _one_example(score_fn)

  def one(x):
    jac = jax.jacfwd(s_one)(x)  # [D, D]
    return jnp.trace(jac) + 0.5 * jnp.sum(s_one(x) ** 2)

  return jnp.mean(jax.vmap(one)(x))


def ssm_loss(score_fn, x: Array, v: Array, *, variance_reduction: bool = False) -> Array:
  """Sliced score matching (Song et al. 2019), with random projections ``v``.

  Per example and projection: ``v^T (d score / dx) v + 1/2 (v^T score)^2``, or with variance reduction
  ``v^T (d score / dx) v + 1/2 |score|^2`` (exact for ``E[v v^T] = I``).

  Args:
    score_fn: batched ``score_fn(x [B, D]) -> [B, D]``.
    x: data ``[B, D]``.
    v: projections ``[B, D]`` or ``[M, B, D]`` (M projections per example), e.g. standard normal.
  """
  if jnp.ndim(x) != 2:
    raise ValueError(f"ssm_loss expects x of shape [B, D], got {jnp.shape(x)}.")
  if jnp.shape(v) == jnp.shape(x):
    v = v[None]
  if jnp.ndim(v) != 3 or jnp.shape(v)[1:] != jnp.shape(x):
    raise ValueError(f"v must have shape [B, D] = {jnp.shape(x)} or [M, B, D], got {jnp.shape(v)}.")
  s_one = _one_example(score_fn)

  def one(x, v):  # x [D], v [D]
    score, jvp = jax.jvp(s_one, (x,), (v,))
    second = 0.5 * jnp.sum(score**2) if variance_reduction else 0.5 * jnp.dot(v, score) ** 2
    return jnp.dot(v, jvp) + second

  return jnp.mean(jax.vmap(jax.vmap(one), in_axes=(None, 0))(x, v))


# ---- factories: draw the randomness, call the cores ----------------------------------------------------

def _uniform_t(key: Array, batch: int, T: float, eps: float) -> Array:
  return jax.random.uniform(key, (batch,)) * (T - eps) + eps


def make_sde_loss_fn(sde: sde_lib.SDE, *, reduce_mean: bool = True, likelihood_weighting: bool = False,
                     eps: float = 1e-5):
  """``loss_fn(key, score_fn, x)``: ``t ~ U(eps, T)``, ``z ~ N(0, I)``, then :func:`sde_loss`."""

  def loss_fn(key, score_fn, x):
    key_t, key_z = jax.random.split(key)
    t = _uniform_t(key_t, x.shape[0], sde.T, eps)
    z = jax.random.normal(key_z, x.shape, x.dtype)
    return sde_loss(sde, score_fn, x, t, z, reduce_mean=reduce_mean, likelihood_weighting=likelihood_weighting)

  return loss_fn


def make_smld_loss_fn(sde: sde_lib.VESDE, *, reduce_mean: bool = False):
  """``loss_fn(key, model_fn, x)``: uniform labels in ``[0, N)``, ``noise ~ N(0, I)``, then :func:`smld_loss`."""
  if not isinstance(sde, sde_lib.VESDE):
    raise ValueError(f"SMLD training needs a VESDE, got {type(sde).__name__}.")

  def loss_fn(key, model_fn, x):
    key_l, key_n = jax.random.split(key)
    labels = jax.random.randint(key_l, (x.shape[0],), 0, sde.N)
    noise = jax.random.normal(key_n, x.shape, x.dtype)
    return smld_loss(sde, model_fn, x, labels, noise, reduce_mean=reduce_mean)

  return loss_fn


def make_ddpm_loss_fn(sde: sde_lib.VPSDE, *, reduce_mean: bool = True):
  """``loss_fn(key, model_fn, x)``: uniform labels in ``[0, N)``, ``noise ~ N(0, I)``, then :func:`ddpm_loss`."""
  if not isinstance(sde, sde_lib.VPSDE):
    raise ValueError(f"DDPM training needs a VPSDE, got {type(sde).__name__}.")

  def loss_fn(key, model_fn, x):
    key_l, key_n = jax.random.split(key)
    labels = jax.random.randint(key_l, (x.shape[0],), 0, sde.N)
    noise = jax.random.normal(key_n, x.shape, x.dtype)
    return ddpm_loss(sde, model_fn, x, labels, noise, reduce_mean=reduce_mean)

  return loss_fn


def noise_conditional_loss(sde: sde_lib.SDE, score_fn, x: Array, t: Array, z: Array, v: Array, kind: str, *,
                           per_example: bool = False) -> Array:
  """ISM or sliced SM at the noise levels ``t``, for a time-conditioned score on flat data ``[B, D]``.

  ``x_t = a(t) x + s(t) z``; the score ``score_fn(., t)`` is fitted to ``p_t`` by ISM (``kind='ism'``) or
  sliced SM (``'ssm'``, ``'ssm_vr'``, projections ``v``) on ``x_t``, weighted by ``s(t)^2`` so that every
  noise level contributes on the same scale (the weighting of eq. 7). Unlike DSM, these objectives never
  see the clean ``x``; they only need samples of ``p_t``.

  Args:
    sde: the forward SDE.
    score_fn: batched ``score_fn(x [B, D], t [B]) -> [B, D]``.
    x: data ``[B, D]``; t: times ``[B]``; z: standard normal ``[B, D]``.
    v: projections ``[B, M, D]`` (M per example; unused by ``ism``).
    kind: ``'ism'``, ``'ssm'`` or ``'ssm_vr'``.
    per_example: return each example's loss ``[B]`` instead of their mean.
  """
  if kind not in ("ism", "ssm", "ssm_vr"):
    raise ValueError(f"Unknown noise-conditional loss {kind!r}; expected 'ism', 'ssm' or 'ssm_vr'.")
  _check_same_shape("z", z, x)
  mean, std = sde.marginal_prob(x, t)
  x_t = mean + jax.vmap(jnp.multiply)(std, z)

  def one(x_t, t, std, v):
    s_t = lambda y: score_fn(y, jnp.broadcast_to(t, (y.shape[0],)))
    if kind == "ism":
      loss = ism_loss(s_t, x_t[None])
    else:
      loss = ssm_loss(s_t, x_t[None], v[:, None], variance_reduction=(kind == "ssm_vr"))
    return std**2 * loss

  return _mean_unless(jax.vmap(one)(x_t, t, std, v), per_example)


def make_noise_conditional_loss_fn(sde: sde_lib.SDE, kind: str, *, n_projections: int = 1, eps: float = 1e-5):
  """``loss_fn(key, score_fn, x)``: ``t ~ U(eps, T)``, ``z, v ~ N(0, I)``, then :func:`noise_conditional_loss`."""
  if kind not in ("ism", "ssm", "ssm_vr"):
    raise ValueError(f"Unknown noise-conditional loss {kind!r}; expected 'ism', 'ssm' or 'ssm_vr'.")

  def loss_fn(key, score_fn, x):
    key_t, key_z, key_v = jax.random.split(key, 3)
    B = x.shape[0]
    t = _uniform_t(key_t, B, sde.T, eps)
    z = jax.random.normal(key_z, x.shape, x.dtype)
    v = jax.random.normal(key_v, (B, n_projections) + x.shape[1:], x.dtype)
    return noise_conditional_loss(sde, score_fn, x, t, z, v, kind)

  return loss_fn


def make_loss_fn(kind: str, sde: sde_lib.SDE, *, reduce_mean: bool = True, likelihood_weighting: bool = False,
                 eps: float = 1e-5, n_projections: int = 1):
  """The training loss named ``kind`` (one of :data:`LOSSES`) as ``loss_fn(key, fn, x)``.

  ``fn`` is the time-conditioned ``score_fn(x, t)`` for ``dsm``/``ism``/``ssm``/``ssm_vr`` and the raw
  ``model_fn(x, labels)`` for the discrete ``smld``/``ddpm`` losses.
  """
  if kind == "dsm":
    return make_sde_loss_fn(sde, reduce_mean=reduce_mean, likelihood_weighting=likelihood_weighting, eps=eps)
  if likelihood_weighting:
    raise ValueError(f"likelihood_weighting is only defined for the continuous 'dsm' loss, not {kind!r}.")
  if kind == "smld":
    return make_smld_loss_fn(sde, reduce_mean=reduce_mean)
  if kind == "ddpm":
    return make_ddpm_loss_fn(sde, reduce_mean=reduce_mean)
  if kind in ("ism", "ssm", "ssm_vr"):
    return make_noise_conditional_loss_fn(sde, kind, n_projections=n_projections, eps=eps)
  raise ValueError(f"Unknown loss {kind!r}; expected one of {LOSSES}.")
