"""The training step of the image models: a pure function of (state, batch, key), fused with ``lax.scan``.

The step knows nothing about devices: :func:`make_train_step` averages gradients over a mapped axis only
when it is given ``axis_name`` (``jax.pmap``, whose index gives the device's rows of the global batch), and
:mod:`score_jax.parallel` does the device mapping.

Randomness is derived, not carried. Step ``s`` uses ``key_s = fold_in(key, s)``, and example ``i`` of the
*global* batch draws its time (or noise level), its Gaussian noise and its dropout masks from
``fold_in(key_s, i)``. On a device that holds rows ``[o, o + b)`` of the global batch, ``i`` runs over
``o + arange(b)`` with ``o = axis_index * b``. A training run is therefore a function of (seed, data)
alone: one device, ``jax.jit`` over a mesh and ``jax.pmap`` over the same global batch draw the same
numbers for the same example, and give the same losses, gradients and parameters up to float rounding.
(Folding the device index into the key, as the original does, would tie the draws to the device layout.)
The network runs on the whole batch at once; its dropout layers (``flax.linen.Dropout``) are intercepted
(:func:`_per_example_dropout`) so that each example's mask comes from its own key and the layer, never
from its position in the batch. (Applying the network one example at a time under ``jax.vmap`` would give
the same independence; on CPU it made the full-size DDPM++ step ~10% slower and its compilation ~15%
longer.)
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from score_jax import conditional, edm, losses, models, randomness, sde_lib

Array = jax.Array

__all__ = [
    "TrainState", "init_train_state", "loss_kind", "make_loss_fn", "make_eval_loss_fn", "make_train_step",
    "make_fused_train_step", "ema_update", "example_keys", "make_model_fn", "example_time", "example_noise",
    "grad_accum_steps", "accumulate_value_and_grad",
]



@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree.

  Attributes:
    step: int32 scalar, the number of optimizer updates done.
    params: the network parameters (fp32 master weights).
    ema_params: their exponential moving average (``model.ema_rate``), used for sampling and evaluation.
    opt_state: the optax state.
  """

  step: Array
  params: Any
  ema_params: Any
  opt_state: Any

  def to_dict(self) -> dict[str, Any]:
    """``{step, params, ema_params, opt_state}``: the tree a :class:`score_jax.checkpoints.Checkpointer` saves
    (``TrainState(**d)`` turns it back)."""
    return dict(step=self.step, params=self.params, ema_params=self.ema_params, opt_state=self.opt_state)


def init_train_state(key: Array, config: ml_collections.ConfigDict, model, optimizer: optax.GradientTransformation,
                     input_shape: tuple[int, ...] | None = None, init_label: float | int = 0) -> TrainState:
  """A fresh state: network initialised from ``key``, EMA equal to the parameters, step 0.

  Args:
    key: PRNG key of the initialisation.
    config: the experiment config; gives the image shape when ``input_shape`` is None.
    model: the flax network ``model(x, labels, train=...)``.
    optimizer: the optax transformation (:func:`score_jax.builders.build_optimizer`).
    input_shape: shape of a network input ``[B, ...]``, e.g. ``(1, D)``; default
      ``(1, data.image_size, data.image_size, data.num_channels)``.
    init_label: the conditioning input of the initialisation: an int32 label 0 for score networks (as the
      original's ``init_model``), a float noise level for the classifiers of :mod:`score_jax.classifier`.

  Returns:
    A :class:`TrainState`.
  """
  if input_shape is None:
    d = config.data
    input_shape = (1, d.image_size, d.image_size, d.num_channels)  # [B, H, W, C]
  if len(input_shape) < 2:
    raise ValueError(f"input_shape must be [B, ...] with a batch axis, got {tuple(input_shape)}.")
  x = jnp.zeros(input_shape, jnp.float32)
  labels = jnp.full(input_shape[:1], init_label, jnp.int32 if isinstance(init_label, int) else jnp.float32)
  init = jax.jit(lambda key, x, labels: model.init({"params": key, "dropout": key}, x, labels, train=False))
  variables = init(key, x, labels)  # jitted: eager init of a large network runs op by op
  extra = sorted(set(variables) - {"params"})
  if extra:
    raise ValueError(f"the network has mutable collections {extra}; only 'params' is supported in training.")
  params = variables["params"]
  ema_params = jax.tree_util.tree_map(jnp.array, params)  # own buffers: the train step donates both trees
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
                    opt_state=optimizer.init(params))


def ema_update(ema_params, params, rate: float):
  """``ema <- rate * ema + (1 - rate) * params`` (the original's ``params_ema`` update, after the step)."""
  return jax.tree_util.tree_map(lambda e, p: rate * e + (1.0 - rate) * p, ema_params, params)


def loss_kind(config: ml_collections.ConfigDict, sde: sde_lib.SDE) -> str:
  """The objective of ``config``, as the original derives it: ``dsm`` if ``training.continuous``, else
  ``smld`` for a VE SDE and ``ddpm`` for a VP SDE. A ``training.loss`` that disagrees is an error."""
  t = config.training
  if t.get("loss", "") in edm.TRAINING_LOSSES:
    if not (t.continuous and isinstance(sde, sde_lib.VESDE)):
      raise ValueError(f"training.loss={t.loss!r} (EDM) needs training.continuous=True and a VE SDE, got "
                       f"continuous={t.continuous} with {type(sde).__name__}.")
    return t.loss
  if t.continuous:
    kind = "dsm"
  elif isinstance(sde, sde_lib.VESDE):
    kind = "smld"
  elif isinstance(sde, sde_lib.VPSDE):
    kind = "ddpm"
  else:
    raise ValueError(f"discrete training (training.continuous=False) needs a VE or VP SDE, got "
                     f"{type(sde).__name__}; set training.continuous=True.")
  if t.get("loss", kind) != kind:
    raise ValueError(f"training.loss={t.loss!r} does not match training.continuous={t.continuous} with "
                     f"{type(sde).__name__} (which train with {kind!r}).")
  if kind != "dsm" and t.likelihood_weighting:
    raise ValueError(f"training.likelihood_weighting is only defined for continuous training, not {kind!r}.")
  return kind


example_keys = randomness.example_keys  # keys [B] of the rows offset + stride * arange(B)


def example_time(key: Array, sde: sde_lib.SDE, eps: float) -> Array:
  """The diffusion time ``t ~ U(eps, T)`` of one example of continuous training, from its key (a scalar)."""
  return jax.random.uniform(jax.random.fold_in(key, randomness.EXAMPLE_T), ()) * (sde.T - eps) + eps


def example_noise(key: Array, shape: tuple[int, ...]) -> Array:
  """The standard normal noise ``z`` (fp32, ``shape``) of one example, from its key."""
  return jax.random.normal(jax.random.fold_in(key, randomness.EXAMPLE_NOISE), shape, jnp.float32)


# Modules that stay in fp32 under bf16: the fixed random Fourier frequencies (std 16) multiply log sigma, and
# bf16's 8-bit mantissa would move their phases by radians.
_FP32_MODULES = (models.GaussianFourierProjection,)


def _cast_floats(tree, dtype):
  return jax.tree_util.tree_map(
      lambda a: a.astype(dtype) if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def _cast_params(params, dtype):
  """Float parameters in ``dtype``, except those of :data:`_FP32_MODULES` (kept fp32)."""
  fp32_names = tuple(cls.__name__ for cls in _FP32_MODULES)

  def cast(path, a):
    keep = any(getattr(k, "key", "").startswith(fp32_names) for k in path)
    return a if keep or not jnp.issubdtype(a.dtype, jnp.floating) else a.astype(dtype)

  return jax.tree_util.tree_map_with_path(cast, params)


def _bf16_inputs(next_fun, args, kwargs, context):
  """Flax interceptor: the float inputs of every submodule in bf16, so that layers mixing a bf16 activation
  with the fp32 time embedding compute in bf16 instead of promoting to fp32."""
  if context.method_name == "__call__" and context.module.parent is not None \
      and not isinstance(context.module, _FP32_MODULES):
    args, kwargs = _cast_floats((args, kwargs), jnp.bfloat16)
  return next_fun(*args, **kwargs)


# The 'dropout' rng the network is applied with: it only tells the dropout layers apart (flax folds each
# layer's path and call count into it); the randomness of a mask comes from its example's key.
_DROPOUT_LAYERS_KEY = 0


def _per_example_dropout(keys: Array):
  """Flax interceptor of ``nn.Dropout``: the mask of example ``b`` is drawn from ``keys[b]`` and the layer.

  The layer is identified by ``make_rng('dropout')`` (a key derived from the constant root
  :data:`_DROPOUT_LAYERS_KEY`, the layer's path and its call count), whose data are folded into each
  example's key. Each example's masks therefore depend on its own key alone, not on the batch it is in, as
  when the network is applied to one example at a time. Same keep probability and ``1 / keep`` scaling as
  ``nn.Dropout``; other modules are not touched.
  """

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    if not isinstance(module, nn.Dropout) or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    x = args[0]
    deterministic = nn.merge_param("deterministic", module.deterministic,
                                   args[1] if len(args) > 1 else kwargs.get("deterministic"))
    if deterministic or module.rate == 0.0:
      return x
    if module.broadcast_dims or kwargs.get("rng") is not None:
      raise NotImplementedError("per-example dropout supports nn.Dropout without broadcast_dims or an rng argument")
    if module.rate == 1.0:
      return jnp.zeros_like(x)
    layer = jax.random.key_data(module.make_rng(module.rng_collection)).reshape(-1)
    keep = 1.0 - module.rate

    def mask(key):
      for word in range(layer.shape[0]):
        key = jax.random.fold_in(key, layer[word])
      return jax.random.bernoulli(key, keep, x.shape[1:])

    masks = jax.vmap(mask)(keys)  # [B, ...]
    return jax.lax.select(masks, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))

  return interceptor


def make_model_fn(model, params, keys: Array, compute_dtype, train: bool = True,
                  class_labels: Array | None = None) -> Callable[[Array, Array], Array]:
  """The network as a batched ``model_fn(x [B, ...], labels [B]) -> fp32 [B, ...]``, in train mode (dropout)
  unless ``train=False``.

  Each example's dropout masks come from its own key in ``keys [B]`` (:func:`_per_example_dropout`). With a
  bf16 ``compute_dtype`` the parameters and the inputs of every layer are bf16 (the fp32 master weights get
  fp32 gradients through the cast), except the Fourier features (:data:`_FP32_MODULES`); the labels reach the
  network in fp32 and the output is cast back to fp32 for the loss. ``class_labels [B]``: the classes of a
  class-conditional network (:func:`score_jax.models.get_model_fn`).
  """
  bf16 = compute_dtype == jnp.bfloat16
  variables = {"params": _cast_params(params, compute_dtype) if bf16 else params}
  dropout_keys = jax.vmap(lambda k: jax.random.fold_in(k, randomness.EXAMPLE_DROPOUT))(keys)

  def model_fn(x, labels):
    apply = models.get_model_fn(model, variables, train=train,
                                rng=jax.random.PRNGKey(_DROPOUT_LAYERS_KEY) if train else None,
                                class_labels=class_labels)
    with nn.intercept_methods(_per_example_dropout(dropout_keys)):
      if bf16:
        with nn.intercept_methods(_bf16_inputs):
          out = apply(x.astype(compute_dtype), labels)
      else:
        out = apply(x, labels)
    return out.astype(jnp.float32)

  return model_fn


def make_loss_fn(config: ml_collections.ConfigDict, model, sde: sde_lib.SDE, *, train: bool = True,
                 per_example: bool = False):
  """``loss_fn(params, x [B, ...], key_step, offset=0, stride=1) -> scalar`` of the objective of ``config``
  (each example's loss ``[B]`` with ``per_example``).

  ``x`` holds the global-batch rows ``offset + stride * arange(B)``; their draws come from :func:`example_keys`.
  Continuous training uses denoising score matching (:func:`score_jax.losses.sde_loss`, eq. 7) on the
  network as a score (:func:`score_jax.models.make_score_fn`); discrete training uses SMLD (VE) or DDPM
  (VP) on the raw network. ``training.bf16`` runs the network in bf16 (see :func:`make_model_fn`).
  ``train=False`` evaluates the network without dropout (the evaluation loss).

  A class-conditional model (``model.label_dim = K > 0``, :mod:`score_jax.conditional`) takes ``x`` as the pytree
  ``(images [B, ...], class_labels [B])``; in training each label is replaced by the null class ``K`` with
  probability ``training.label_dropout``, drawn from its example's key.
  """
  t = config.training
  kind = loss_kind(config, sde)
  n_classes = conditional.label_dim(config)
  p_drop = conditional.label_dropout(config) if train else 0.0
  compute_dtype = jnp.bfloat16 if t.get("bf16", False) else jnp.float32
  eps = t.get("eps", 1e-5)
  if kind in edm.TRAINING_LOSSES:  # EDM: the network is a score_jax.edm_net.EDMPrecond (builders.build_model)
    edm_kind = edm.TRAINING_LOSSES[kind]
    _, edm_loss_params = edm.split_params(edm_kind, config.get("edm", ml_collections.ConfigDict()).to_dict())
    model = model.clone(output="denoised")

  def loss_fn(params, x, key_step, offset=0, stride=1):
    class_labels = None
    if n_classes:
      x, class_labels = x
    keys = example_keys(key_step, x.shape[0], offset, stride)  # [B]
    noise = jax.vmap(lambda k: example_noise(k, x.shape[1:]))(keys)  # [B, ...]
    key_t = jax.vmap(lambda k: jax.random.fold_in(k, randomness.EXAMPLE_T))(keys)
    if n_classes:
      class_labels = conditional.drop_labels_of_examples(jnp.asarray(class_labels, jnp.int32), keys, p_drop, n_classes)
    model_fn = make_model_fn(model, params, keys, compute_dtype, train, class_labels=class_labels)
    x = x.astype(jnp.float32)
    if kind in edm.TRAINING_LOSSES:  # per element as EDM; summed per example (EDM's) or averaged (reduce_mean)
      draw_u = jax.random.normal if edm_kind == "edm" else jax.random.uniform
      u = jax.vmap(lambda k: draw_u(k, ()))(key_t)  # [B]
      per_element = edm.loss(edm_kind, model_fn, x, u, noise, **edm_loss_params)
      per_ex = jax.vmap(jnp.mean if t.reduce_mean else jnp.sum)(per_element)
      return per_ex if per_example else jnp.mean(per_ex)
    if kind == "dsm":
      time = jax.vmap(lambda k: example_time(k, sde, eps))(keys)  # [B]
      score_fn = models.make_score_fn(sde, model_fn, continuous=True)
      return losses.sde_loss(sde, score_fn, x, time, noise, reduce_mean=t.reduce_mean,
                             likelihood_weighting=t.likelihood_weighting, per_example=per_example)
    labels = jax.vmap(lambda k: jax.random.randint(k, (), 0, sde.N))(key_t)  # [B] int
    loss = losses.smld_loss if kind == "smld" else losses.ddpm_loss
    return loss(sde, model_fn, x, labels, noise, reduce_mean=t.reduce_mean, per_example=per_example)

  return loss_fn


def make_eval_loss_fn(config: ml_collections.ConfigDict, model, sde: sde_lib.SDE):
  """``eval_loss(params, x [B, ...], key_step, offset=0) -> [B]``: each example's loss, network without dropout.

  Example ``i`` of the batch gets the draws of global index ``offset + i`` (as in training), so the losses of
  an evaluation pass do not depend on how it is batched, and padded rows can be masked out of the mean.
  """
  return make_loss_fn(config, model, sde, train=False, per_example=True)


def grad_accum_steps(config: ml_collections.ConfigDict) -> int:
  """``training.grad_accum_steps`` (1 where a config has none), checked to be an integer >= 1."""
  k = config.training.get("grad_accum_steps", 1)
  if isinstance(k, bool) or not isinstance(k, int) or k < 1:
    raise ValueError(f"training.grad_accum_steps={k!r}; expected an integer >= 1 (1: no gradient accumulation).")
  return k


def accumulate_value_and_grad(loss_fn, params, x, key_step: Array, offset: Array | int, n_micro: int):
  """``(loss, grads)`` of the batch ``x [B, ...]`` (rows ``offset + arange(B)``) as the mean over ``n_micro``
  micro-batches of ``B / n_micro`` rows, one at a time in a ``lax.scan``.

  Micro-batch ``k`` takes the rows ``k, k + n_micro, k + 2 n_micro, ...`` (a strided split): on a batch
  sharded over devices in contiguous blocks (``jax.jit`` over a mesh) each micro-batch is then split the
  same way, with no data movement. Its rows are global examples ``offset + k + n_micro * arange(B / n_micro)``
  (``loss_fn``'s ``offset`` and ``stride``), so every example draws what it draws in the full batch, and
  ``loss_fn`` being a mean over its batch, the result is the full batch's up to float rounding. Only one
  micro-batch's activations are alive at a time; the carry is one gradient.
  """
  batch_size = jax.tree_util.tree_leaves(x)[0].shape[0]
  if batch_size % n_micro:
    raise ValueError(f"the batch of {batch_size} rows (per device) does not split into training.grad_accum_steps="
                     f"{n_micro} micro-batches; use a batch size that is a multiple of grad_accum_steps x devices.")
  micro = batch_size // n_micro
  # [B, ...] -> [B / K, K, ...] -> [K, B / K, ...]: micro-batch k is rows k::K
  xs = jax.tree_util.tree_map(lambda a: jnp.swapaxes(a.reshape((micro, n_micro) + a.shape[1:]), 0, 1), x)

  def body(total, inputs):
    k, xk = inputs
    loss, grads = jax.value_and_grad(loss_fn)(params, xk, key_step, offset + k, n_micro)
    return jax.tree_util.tree_map(jnp.add, total, (loss, grads)), None

  zeros = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
  total, _ = jax.lax.scan(body, zeros, (jnp.arange(n_micro), xs))
  return jax.tree_util.tree_map(lambda v: v / n_micro, total)


def make_train_step(config: ml_collections.ConfigDict, model, sde: sde_lib.SDE,
                    optimizer: optax.GradientTransformation, axis_name: str | None = None, loss_fn=None):
  """One optimizer step as a pure ``step(state, x [B, ...], key) -> (state, metrics)``.

  The loss is that of :func:`make_loss_fn`; the update is ``optimizer`` on the gradient (averaged over
  ``axis_name`` with ``lax.pmean`` when given, where ``x`` is that device's share of the global batch);
  the EMA follows with ``model.ema_rate``. The step's randomness is ``fold_in(key, state.step)``: pass the
  same ``key`` at every step. The returned function carries its ``axis_name`` as an attribute.

  With ``training.grad_accum_steps = K > 1`` the gradient is accumulated over ``K`` micro-batches of the
  (per-device) batch inside the step (:func:`accumulate_value_and_grad`); the optimizer and the EMA still
  step once per global batch, with the same update as ``K = 1`` up to float rounding.

  ``loss_fn(params, x, key_step, offset, stride=1)`` replaces the score objective, e.g. the cross-entropy of
  :func:`score_jax.classifier.make_loss_fn`, whose ``x`` is a pytree ``(images [B, ...], labels [B])``; it
  must be the mean over its batch, and take ``stride`` (rows ``offset + stride * arange(B)``) for ``K > 1``.

  Returns:
    ``step``; ``metrics`` holds the fp32 scalars ``loss`` and ``grad_norm`` (before clipping), averaged
    over ``axis_name``.
  """
  loss_fn = make_loss_fn(config, model, sde) if loss_fn is None else loss_fn
  ema_rate = config.model.ema_rate
  # EDM's EMA: a half-life in thousands of images with ramp-up (edm.ema_beta), instead of the fixed rate.
  ema_halflife_kimg = config.model.get("ema_halflife_kimg", 0.0)
  ema_rampup_ratio = config.model.get("ema_rampup_ratio", 0.0)
  n_micro = grad_accum_steps(config)

  def step(state: TrainState, x: Array, key: Array):
    key_step = jax.random.fold_in(key, state.step)
    batch_size = jax.tree_util.tree_leaves(x)[0].shape[0]
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch_size
    if n_micro == 1:
      loss, grads = jax.value_and_grad(loss_fn)(state.params, x, key_step, offset)
    else:
      loss, grads = accumulate_value_and_grad(loss_fn, state.params, x, key_step, offset, n_micro)
    if axis_name is not None:
      loss, grads = jax.lax.pmean((loss, grads), axis_name)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rate = ema_rate if not ema_halflife_kimg else edm.ema_beta(config.training.batch_size, ema_halflife_kimg,
                                                                state.step, ema_rampup_ratio)
    ema_params = ema_update(state.ema_params, params, rate)
    new_state = TrainState(step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state)
    return new_state, dict(loss=loss, grad_norm=optax.tree.norm(grads))

  step.axis_name = axis_name
  return step


def make_fused_train_step(step_fn, unroll: bool | int | None = None):
  """``training.n_jitted_steps`` steps in one ``lax.scan``: ``steps(state, xs [n, B, ...], key)``.

  Args:
    step_fn: a step of :func:`make_train_step`.
    unroll: passed to ``lax.scan``. Default: fully unrolled on the CPU backend, where XLA runs a network
      inside a loop body 10-15x slower than the same network outside one (measured on the small NCSN++ of
      the tests: 4.7 s vs 0.3 s per step), and a rolled loop elsewhere (shorter compiles). One step (``n = 1``)
      is never wrapped in a loop.

  Returns:
    ``steps`` returning ``(state, metrics)`` with each metric stacked ``[n]``; identical to ``n`` calls of
    ``step_fn`` on ``xs[0], ..., xs[n - 1]``.
  """

  def steps(state: TrainState, xs: Array, key: Array):
    if jax.tree_util.tree_leaves(xs)[0].shape[0] == 1:
      state, metrics = step_fn(state, jax.tree_util.tree_map(lambda a: a[0], xs), key)
      return state, jax.tree_util.tree_map(lambda m: m[None], metrics)
    n_unroll = (jax.default_backend() == "cpu") if unroll is None else unroll
    return jax.lax.scan(lambda s, x: step_fn(s, x, key), state, xs, unroll=n_unroll)

  steps.axis_name = getattr(step_fn, "axis_name", None)
  return steps
