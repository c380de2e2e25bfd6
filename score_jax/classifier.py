"""The noise-conditional (time-dependent) classifier of class-conditional sampling (Song et al. 2021, Sec. 5).

Class-conditional sampling follows the conditional reverse-time SDE (eq. 14), whose drift needs
``grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x)``. The first term is the score model;
the second comes from a classifier ``p_t(y | x_t)`` trained on perturbed data (Appendix I.1):

  ``x_t = a(t) x + s(t) z``,  ``t ~ U(eps, T)``,  ``z ~ N(0, I)``,  loss ``-log softmax(f(x_t, s(t)))[y]``,

with the SDE of the score model it will guide. As the original (``models/utils.py``: ``get_logit_fn``,
``get_classifier_grad_fn``), the network is conditioned on the marginal standard deviation ``s(t)`` of
the noise (``sde.marginal_prob(x, t)[1]``, the noise level ``sigma(t)`` of a VE SDE).

Pure functions here; the pipeline (:mod:`score_jax.pipeline`) trains (``--mode train``) and evaluates
(``--mode eval``, :mod:`score_jax.pipeline.evaluators.classifier`) classifier configs (``configs/classifier/``)
with the same loop, checkpoints and logs as score models, and :func:`score_jax.pipeline.load_classifier` loads
a trained one for guidance.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import randomness, sde_lib, train

Array = jax.Array

__all__ = ["INIT_SIGMA", "cross_entropy", "make_example_fn", "make_loss_fn", "make_eval_fn", "accuracy_by_bins",
           "make_log_prob_fn", "make_log_prob_grad_fn", "check_labels"]

# The noise level the network is initialised at (the original's create_classifier passes ones); any
# positive value gives the same parameters.
INIT_SIGMA = 1.0


def cross_entropy(logits: Array, label: Array) -> Array:
  """``-log p(y | x)`` of one example: ``logits [C]``, integer ``label []``."""
  return -jax.nn.log_softmax(logits)[label]


def make_example_fn(model: nn.Module, sde: sde_lib.SDE, *, eps: float, compute_dtype=jnp.float32,
                    train_mode: bool = True):
  """``fn(params, (x [B, ...], labels [B]), key_step, offset=0) -> dict(loss, correct, t)``, each ``[B]``.

  Example ``i`` of the batch is global example ``offset + i``: its time ``t ~ U(eps, T)`` and noise ``z``
  come from :func:`score_jax.train.example_keys` as in score training, so an evaluation pass does not
  depend on its batching. It is classified at ``x_t = a(t) x + s(t) z`` with noise level ``s(t)``.
  """

  def fn(params, batch, key_step, offset=0, stride=1):
    x, labels = batch
    keys = train.example_keys(key_step, x.shape[0], offset, stride)  # [B]

    def perturb(key, x1):
      t = jax.random.uniform(jax.random.fold_in(key, randomness.EXAMPLE_T), ()) * (sde.T - eps) + eps
      z = jax.random.normal(jax.random.fold_in(key, randomness.EXAMPLE_NOISE), x1.shape, jnp.float32)
      mean, std = sde.marginal_one(x1, t)
      return mean + std * z, std, t

    x_t, sigma, t = jax.vmap(perturb)(keys, x.astype(jnp.float32))
    logits = train.make_model_fn(model, params, keys, compute_dtype, train_mode)(x_t, sigma)  # [B, C]
    loss = jax.vmap(cross_entropy)(logits, labels)
    return dict(loss=loss, correct=jnp.argmax(logits, axis=-1) == labels, t=t)

  return fn


def make_loss_fn(model: nn.Module, sde: sde_lib.SDE, *, eps: float, bf16: bool = False):
  """``loss_fn(params, (x, labels), key_step, offset=0) -> scalar``: the mean cross-entropy on perturbed data,
  the ``loss_fn`` of :func:`score_jax.train.make_train_step` for a classifier."""
  fn = make_example_fn(model, sde, eps=eps, compute_dtype=jnp.bfloat16 if bf16 else jnp.float32)
  return lambda params, batch, key_step, offset=0, stride=1: jnp.mean(fn(params, batch, key_step, offset,
                                                                         stride)["loss"])


def make_eval_fn(model: nn.Module, sde: sde_lib.SDE, *, eps: float):
  """:func:`make_example_fn` in fp32 with the network in evaluation mode."""
  return make_example_fn(model, sde, eps=eps, train_mode=False)


def check_labels(labels: np.ndarray, num_classes: int, where: str, field: str = "classifier.num_classes") -> None:
  """Raise ValueError unless every label is an integer in ``[0, num_classes)`` (``field``: the config field of
  ``num_classes``, named in the message)."""
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"{where} has labels in [{labels.min()}, {labels.max()}], outside [0, {field}="
                     f"{num_classes}); set {field} to the number of classes of the data.")


def accuracy_by_bins(sde: sde_lib.SDE, t: np.ndarray, correct: np.ndarray, *, eps: float, n_bins: int) -> list[dict]:
  """Accuracy within ``n_bins`` equal-width bins of ``t`` over ``[eps, T]``, with the noise levels of the edges.

  Returns:
    one dict per bin: ``t_min``, ``t_max``, ``sigma_min``, ``sigma_max`` (the marginal std ``s(t)`` at the
    edges), ``examples`` and ``accuracy`` (NaN for an empty bin).
  """
  t, correct = np.asarray(t, np.float64), np.asarray(correct, bool)
  edges = np.linspace(eps, sde.T, n_bins + 1)
  stds = np.asarray(jax.vmap(lambda s: sde.marginal_one(jnp.zeros(()), s)[1])(jnp.asarray(edges, jnp.float32)))
  index = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, n_bins - 1)
  out = []
  for b in range(n_bins):
    at = index == b
    out.append(dict(t_min=float(edges[b]), t_max=float(edges[b + 1]), sigma_min=float(min(stds[b], stds[b + 1])),
                    sigma_max=float(max(stds[b], stds[b + 1])), examples=int(at.sum()),
                    accuracy=float(correct[at].mean()) if at.any() else float("nan")))
  return out


def make_log_prob_fn(model: nn.Module, variables, sde: sde_lib.SDE):
  """``log_prob_fn(x [B, ...], t [B], labels [B]) -> log p_t(y | x) [B]``, the network at noise level ``s(t)``."""

  def one(x, t, label):
    sigma = sde.marginal_one(x, t)[1]
    logits = model.apply(variables, x[None], sigma[None], train=False)[0]
    return jax.nn.log_softmax(logits)[label]

  return jax.vmap(one)


def make_log_prob_grad_fn(model: nn.Module, variables, sde: sde_lib.SDE):
  """``log_prob_grad_fn(x [B, ...], t [B], labels [B]) -> grad_x log p_t(y | x) [B, ...]`` (eq. 14's second term).

  Each example's gradient is taken alone (``vmap`` of ``grad``); the network normalises per example, so this
  equals the original's gradient of the batch sum.
  """
  log_prob = make_log_prob_fn(model, variables, sde)

  def one(x, t, label):
    return jax.grad(lambda x1: log_prob(x1[None], t[None], label[None])[0])(x)

  return jax.vmap(one)
