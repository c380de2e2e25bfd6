"""Class-conditional score models and classifier-free guidance (Ho & Salimans 2021; EDM's conditional CIFAR-10).

A class-conditional network (``model.label_dim = K > 0``, NCSN++ / DDPM++ / DDPM) takes, beside the noise level,
a class label in ``[0, K]``; ``K`` is the *null class*, whose embedding is learned by replacing each training
example's label by it with probability ``training.label_dropout`` (a per-example draw, so the result does not
depend on the batch). The same network is then both the conditional model ``D(x; sigma, c)`` and the
unconditional one ``D(x; sigma, null)``.

Guided sampling with weight ``w`` (``sampling.guidance``) uses, for every sampler,

    D_w = D_uncond + w (D_cond - D_uncond),

so ``w = 1`` is the conditional model, ``w = 0`` the unconditional one and ``w > 1`` sharpens the class (Ho &
Salimans' weight is ``w - 1``). Every score_jax parametrisation is affine in ``D`` with coefficients that do
not depend on the class (a score is ``(D - x) / sigma^2``, a noise prediction ``(x - D) / sigma``), so guiding
the raw network output is guiding ``D`` and guiding the score: one rule serves the score samplers (pc, ode,
ddim, dpm_solver, heun) and the EDM samplers alike. For ``w`` other than 0 and 1 each score costs two network
evaluations, made as one call on a doubled batch.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from score_jax import edm, models, randomness, sde_lib, validation

Array = jax.Array

__all__ = ["CLASS_CONDITIONAL_NETWORKS", "RANDOM_CLASS", "label_dim", "label_dropout", "guidance_settings",
           "drop_labels_of_examples", "sample_class_labels", "network_calls_per_score",
           "guided_model_fn", "guided_score_fn"]

# model.name of the networks that take class labels (their label_dim attribute).
CLASS_CONDITIONAL_NETWORKS = ("ncsnpp", "ddpm")
# sampling.class_label: each sample's class drawn uniformly (from its own key).
RANDOM_CLASS = -1


def label_dim(config: ml_collections.ConfigDict) -> int:
  """``model.label_dim``: the number of classes K of a class-conditional model, or 0 (absent: 0).

  (``model.num_classes`` is NCSN's count of noise levels in the original configs, hence the EDM name.)
  """
  m = config.get("model", ml_collections.ConfigDict())
  k = validation.check_int(m.get("label_dim", 0), "model.label_dim", minimum=0)
  if k == 1:
    raise ValueError("model.label_dim=1; expected 0 (unconditional) or the number of classes (>= 2).")
  if k and m.get("name") not in CLASS_CONDITIONAL_NETWORKS:
    raise ValueError(f"model.label_dim={k} needs a class-conditional network, model.name in "
                     f"{list(CLASS_CONDITIONAL_NETWORKS)}; got {m.get('name')!r}.")
  if k and not m.get("conditional", True):
    raise ValueError(f"model.label_dim={k} needs model.conditional=True (the class embedding is added to the noise "
                     "embedding).")
  return k


def label_dropout(config: ml_collections.ConfigDict) -> float:
  """``training.label_dropout`` in ``[0, 1)`` (absent: 0): the probability that a training example's label is
  replaced by the null class. Nonzero only for a class-conditional model."""
  p = config.training.get("label_dropout", 0.0)
  if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
    raise ValueError(f"training.label_dropout={p!r}; expected a probability in [0, 1) (EDM's conditional CIFAR-10 "
                     "uses 0; classifier-free guidance needs > 0, e.g. 0.1).")
  if p and not label_dim(config):
    raise ValueError(f"training.label_dropout={p} needs a class-conditional model (model.label_dim > 0).")
  return float(p)


def guidance_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``{"class_label", "guidance", "label_dim"}`` of ``sampling.class_label`` and ``sampling.guidance``, checked.

  ``class_label``: ``-1`` (:data:`RANDOM_CLASS`, each sample's class drawn uniformly), a class in ``[0, K)``,
  or ``K`` (the null class: unconditional samples). ``guidance``: the weight ``w >= 0`` (1: the conditional
  model, no guidance). An unconditional model must keep the defaults (-1 and 1).
  """
  s = config.get("sampling", ml_collections.ConfigDict())
  k = label_dim(config)
  c = validation.check_int(s.get("class_label", RANDOM_CLASS), "sampling.class_label", minimum=RANDOM_CLASS)
  w = s.get("guidance", 1.0)
  if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or w == float("inf"):
    raise ValueError(f"sampling.guidance={w!r}; expected a finite weight >= 0 (1: the conditional model, 0: the "
                     "unconditional one, > 1: classifier-free guidance).")
  if not k:
    if c != RANDOM_CLASS or w != 1.0:
      raise ValueError(f"sampling.class_label={c} / sampling.guidance={w} apply to a class-conditional model "
                       "(model.label_dim > 0); this one is unconditional: keep -1 and 1.0.")
  elif c > k:
    raise ValueError(f"sampling.class_label={c}; expected -1 (random), a class in [0, {k}) or {k} (the null class).")
  return dict(class_label=c, guidance=float(w), label_dim=k)


def drop_labels_of_examples(labels: Array, keys: Array, p: float, k: int) -> Array:
  """``labels [B]`` with each replaced by the null class ``k`` with probability ``p``
  (:func:`score_jax.edm.drop_labels`), the uniform draw of each from its example's key
  (``fold_in(key_b, EXAMPLE_LABEL_DROP)``), so the drop does not depend on the batch."""
  if not p:
    return labels
  u = jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, randomness.EXAMPLE_LABEL_DROP)))(keys)
  return edm.drop_labels(jnp.asarray(labels, jnp.int32), u, p, k)


def sample_class_labels(key: Array, batch_size: int, offset: Array | int, k: int, class_label: int) -> Array:
  """The classes ``[batch_size]`` of the samples ``offset + arange(batch_size)`` drawn with ``key``: all
  ``class_label``, or for :data:`RANDOM_CLASS` each uniform in ``[0, k)`` from the sample's own key (step 0,
  stream ``SAMPLE_CLASS``), independent of the batch it is drawn in."""
  if class_label != RANDOM_CLASS:
    return jnp.full((batch_size,), class_label, jnp.int32)

  def draw(i):
    key_i = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, i), 0), randomness.SAMPLE_CLASS)
    return jax.random.randint(key_i, (), 0, k)

  return jax.vmap(draw)(offset + jnp.arange(batch_size)).astype(jnp.int32)


def network_calls_per_score(guidance: float) -> int:
  """Network evaluations per score: 1 for ``w`` in {0, 1}, else 2 (conditional and unconditional)."""
  return 1 if guidance in (0.0, 1.0) else 2


def guided_model_fn(model, variables, class_labels: Array, guidance: float, k: int):
  """The raw class-conditional network as ``model_fn(x [B, ...], labels [B])``, guided with weight ``guidance``
  towards ``class_labels [B]``: ``F_u + w (F_c - F_u)``, as :func:`score_jax.edm.guided_denoiser` (one call on a
  doubled batch for ``w`` not in {0, 1})."""
  class_labels = jnp.asarray(class_labels, jnp.int32)
  null = jnp.full_like(class_labels, k)
  if guidance == 1.0:
    return models.get_model_fn(model, variables, class_labels=class_labels)
  if guidance == 0.0:
    return models.get_model_fn(model, variables, class_labels=null)

  def model_fn(x, labels):
    both = models.get_model_fn(model, variables, class_labels=jnp.concatenate([class_labels, null]))
    out = both(jnp.concatenate([x, x]), jnp.concatenate([labels, labels]))
    cond, uncond = jnp.split(out, 2)
    return uncond + guidance * (cond - uncond)

  return model_fn


def guided_score_fn(sde: sde_lib.SDE, model, variables, class_labels: Array, guidance: float, k: int,
                    continuous: bool = True):
  """The guided score ``score_fn(x [B, ...], t [B])`` of a class-conditional network (:func:`guided_model_fn`
  under the conventions of :func:`score_jax.models.get_score_fn`)."""
  return models.make_score_fn(sde, guided_model_fn(model, variables, class_labels, guidance, k), continuous)
