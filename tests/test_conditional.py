"""Class-conditional score models and classifier-free guidance (score_jax.conditional).

Oracles: a null class that is exactly the unconditional network at initialisation, per-example label dropout that
does not depend on the batch, and the exact class-conditional scores of a Gaussian mixture (class k: component k,
null: the mixture), whose guided samples must have the component's or the mixture's moments.
"""

from __future__ import annotations

import pathlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import ROOT, tiny_config, tiny_data

from score_jax import builders, conditional, configs_loader, gmm, nets, pipeline, sde_lib, train
from score_jax.nets import ddpm as nets_ddpm
from score_jax.nets import layers

K = 3


def _ncsnpp(label_dim):  # a tiny DDPM++ (positional embedding, VP labels)
  return nets.NCSNpp(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0, fir=False,
                     progressive="none", progressive_input="none", embedding_type="positional", scale_by_sigma=False,
                     resblock_type="ddpm", label_dim=label_dim)


def _ddpm(label_dim):  # 32 groups: 2 channels per group, so that a per-channel shift survives GroupNorm
  return nets_ddpm.DDPM(nf=64, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0, label_dim=label_dim)


@pytest.mark.parametrize("make", [_ncsnpp, _ddpm], ids=["ncsnpp", "ddpm"])
def test_class_embedding_adds_one_layer_and_null_class_is_the_unconditional_network(make):
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
  t = jnp.array([10.0, 200.0, 500.0, 900.0])
  plain, cond = make(0), make(K)
  nf = plain.nf
  shapes0 = jax.eval_shape(plain.init, jax.random.PRNGKey(1), x, t)
  v1 = jax.jit(lambda k, x, t: cond.init(k, x, t, class_labels=jnp.zeros(4, jnp.int32)))(jax.random.PRNGKey(1), x, t)
  # the same variables (names, shapes) plus the class embedding (EDM's map_label: K -> width of the noise embedding)
  params = dict(v1["params"])
  extra = params.pop(layers.CLASS_EMBED_NAME)
  assert jax.tree_util.tree_map(jnp.shape, {"params": params}) == jax.tree_util.tree_map(lambda a: a.shape, shapes0)
  assert extra["kernel"].shape == (K, nf) and not np.any(np.asarray(extra["bias"]))
  # perturb everything so that the (zero-initialised) output layer does not hide the conditioning
  leaves, tree = jax.tree_util.tree_flatten(v1)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  v1 = jax.tree_util.tree_unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
  v0 = {"params": {n: p for n, p in v1["params"].items() if n != layers.CLASS_EMBED_NAME}}
  apply = jax.jit(lambda v, labels: cond.apply(v, x, t, class_labels=labels))
  out_null = apply(v1, jnp.full(4, K, jnp.int32))
  # the null class (one-hot zero) adds the bias only: zeroing it gives the unconditional network exactly
  v1_zero_bias = jax.tree_util.tree_map(lambda a: a, v1)
  v1_zero_bias["params"][layers.CLASS_EMBED_NAME] = dict(v1["params"][layers.CLASS_EMBED_NAME],
                                                         bias=jnp.zeros(nf))
  np.testing.assert_allclose(apply(v1_zero_bias, jnp.full(4, K, jnp.int32)),
                             jax.jit(plain.apply)(v0, x, t), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(jax.jit(lambda v: cond.apply(v, x, t))(v1), out_null)  # None = the null class
  # different classes, different outputs; each example sees its own label only
  out_a = apply(v1, jnp.array([0, 1, 2, 0]))
  out_b = apply(v1, jnp.array([0, 2, 2, 1]))
  diff = np.abs(np.asarray(out_a - out_b)).reshape(4, -1).max(axis=1)
  assert diff[0] == 0 and diff[2] == 0 and diff[1] > 1e-4 and diff[3] > 1e-4
  with pytest.raises(ValueError, match="unconditional network"):
    plain.apply(v0, x, t, class_labels=jnp.zeros(4, jnp.int32))


def test_label_fields_are_checked():
  config = configs_loader.load_config(ROOT / "configs/vp/cifar10_ddpmpp_continuous.py")
  assert conditional.label_dim(config) == 0 and conditional.label_dropout(config) == 0.0
  assert conditional.guidance_settings(config) == dict(class_label=-1, guidance=1.0, label_dim=0)
  bad = [({"model.label_dim": 1}, "model.label_dim=1"), ({"model.label_dim": -2}, "model.label_dim"),
         ({"training.label_dropout": 0.1}, "needs a class-conditional model"),
         ({"sampling.guidance": 2.0}, "this one is unconditional"),
         ({"model.label_dim": 10, "training.label_dropout": 1.0}, "training.label_dropout=1.0"),
         ({"model.label_dim": 10, "sampling.class_label": 11}, "sampling.class_label=11"),
         ({"model.label_dim": 10, "sampling.guidance": -1.0}, "sampling.guidance=-1.0"),
         ({"model.label_dim": 10, "model.name": "ncsnv2_64"}, "needs a class-conditional network")]
  for overrides, message in bad:
    c = configs_loader.load_config(ROOT / "configs/vp/cifar10_ddpmpp_continuous.py")
    for name, value in overrides.items():
      section, field = name.split(".")
      c[section][field] = value
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
      pipeline.check_config(c)
      conditional.label_dim(c)


def test_label_dropout_and_class_draws_are_per_example():
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(0), i))(jnp.arange(20000))
  labels = jnp.zeros(20000, jnp.int32)
  dropped = np.asarray(conditional.drop_labels_of_examples(labels, keys, 0.3, K) == K)
  assert abs(dropped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 20000)
  # a slice of the keys drops the same examples (a draw per example, not per batch)
  np.testing.assert_array_equal(conditional.drop_labels_of_examples(labels[100:108], keys[100:108], 0.3, K) == K,
                                dropped[100:108])
  np.testing.assert_array_equal(conditional.drop_labels_of_examples(labels, keys, 0.0, K), labels)
  key = jax.random.PRNGKey(5)
  classes = np.asarray(conditional.sample_class_labels(key, 3000, 0, K, conditional.RANDOM_CLASS))
  assert set(np.unique(classes)) == set(range(K)) and np.all(np.abs(np.bincount(classes) / 3000 - 1 / K) < 0.04)
  np.testing.assert_array_equal(conditional.sample_class_labels(key, 10, 40, K, -1), classes[40:50])
  np.testing.assert_array_equal(conditional.sample_class_labels(key, 4, 0, K, 2), [2, 2, 2, 2])
  assert [conditional.network_calls_per_score(w) for w in (0.0, 1.0, 2.5)] == [1, 1, 2]


def test_conditional_loss_uses_the_labels_and_drops_them_per_example(tmp_path):
  config = tiny_config(tmp_path / "unused.npz", **{"model.label_dim": K, "training.label_dropout": 0.5})
  sde = builders.build_sde(config)
  model = builders.build_model(config)
  x = jax.random.uniform(jax.random.PRNGKey(0), (8, 8, 8, 3))
  labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
  params = jax.jit(lambda k: model.init(k, x, jnp.ones(8), class_labels=labels))(jax.random.PRNGKey(1))["params"]
  leaves, tree = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
  params = jax.tree_util.tree_unflatten(tree, [a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
  key = jax.random.PRNGKey(3)
  dropping = jax.jit(train.make_loss_fn(config, model, sde, per_example=True))
  config.training.label_dropout = 0.0
  plain = jax.jit(train.make_loss_fn(config, model, sde, per_example=True))
  with_drop = np.asarray(dropping(params, (x, labels), key))
  # the same as no dropout on the labels that the examples' own keys drop
  drop_keys = train.example_keys(key, 8)
  dropped = conditional.drop_labels_of_examples(labels, drop_keys, 0.5, K)
  assert 0 < int(jnp.sum(dropped == K)) < 8
  np.testing.assert_allclose(with_drop, plain(params, (x, dropped), key), rtol=1e-6)
  # the labels matter (the batch-independence of the other draws is tested with the unconditional losses)
  other = np.asarray(plain(params, (x, (labels + 1) % K), key))
  assert np.abs(other - np.asarray(plain(params, (x, labels), key))).max() > 1e-4


# ---- the Gaussian-mixture oracle: exact class-conditional scores ---------------------------------------------

MIXTURE = gmm.GaussianMixture(weights=np.array([0.5, 0.5]), means=np.array([[-2.0, 0.0], [2.0, 1.0]]),
                              covs=np.array([np.diag([0.25, 0.16]), np.diag([0.09, 0.36])]))


class _ExactClassScores(nn.Module):
  """The exact score of class k (component k of :data:`MIXTURE`) and of the null class (the whole mixture) under
  a VE SDE, as a score_jax network of continuous VE labels (sigma)."""

  mixture: Any
  sde: Any

  @nn.compact
  def __call__(self, x, labels, train=False, class_labels=None):
    sde = self.sde
    t = jnp.log(labels / sde.sigma_min) / jnp.log(sde.sigma_max / sde.sigma_min)
    n = self.mixture.n_components
    scores = jnp.stack([self.mixture.component(k).score_fn(sde)(x, t) for k in range(n)]
                       + [self.mixture.score_fn(sde)(x, t)])  # [n + 1, B, D]
    c = jnp.full(x.shape[:1], n) if class_labels is None else class_labels
    return scores[c, jnp.arange(x.shape[0])]


def _sampler_config(method, steps=40):
  c = ml_collections.ConfigDict(configs_loader.load_config(ROOT / "configs/edm/cifar10_ddpmpp_edm.py").to_dict())
  c.sampling.method = method
  c.sampling.N = steps
  return c


@pytest.mark.parametrize("method", ["edm", "heun", "ode"])
def test_guided_samples_of_exact_class_scores_have_the_exact_moments(method):
  sde = sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0, N=1000)
  model = _ExactClassScores(MIXTURE, sde)
  config = _sampler_config(method)
  n = 4000
  shape = (n, 2)

  def draw(class_label, guidance):
    labels = jnp.full(n, class_label, jnp.int32)
    score_fn = conditional.guided_score_fn(sde, model, {}, labels, guidance, MIXTURE.n_components)
    return jax.jit(builders.build_sampler(config, sde, score_fn, shape))(jax.random.PRNGKey(0), 0)

  for k in range(2):  # w = 1: the conditional model, class k -> component k
    x, _ = draw(k, 1.0)
    x = np.asarray(x)
    np.testing.assert_allclose(x.mean(0), MIXTURE.means[k], atol=0.04)
    # 40 steps: the discretisation error of the stds is ~1% (6% at EDM's 18 steps; 0.4% at 100)
    np.testing.assert_allclose(x.std(0), np.sqrt(np.diag(MIXTURE.covs[k])), rtol=0.04)
  for w, c in ((0.0, 0), (1.0, MIXTURE.n_components)):  # w = 0, or the null class: the unconditional mixture
    x = np.asarray(draw(c, w)[0])
    mean = MIXTURE.weights @ MIXTURE.means
    second = sum(wk * (np.diag(C) + m**2) for wk, m, C in zip(MIXTURE.weights, MIXTURE.means, MIXTURE.covs))
    np.testing.assert_allclose(x.mean(0), mean, atol=0.1)
    np.testing.assert_allclose(x.std(0), np.sqrt(second - mean**2), rtol=0.04)
    assert 0.45 < np.mean(x[:, 0] > 0) < 0.55  # both modes, at their weights


def test_guidance_is_the_stated_combination_and_w1_is_the_conditional_sampler():
  sde = sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0, N=1000)
  model = _ExactClassScores(MIXTURE, sde)
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 2)) * 3
  t = jnp.linspace(0.1, 0.9, 6)
  labels = jnp.array([0, 1, 0, 1, 1, 0])
  score = lambda c, w: jax.jit(conditional.guided_score_fn(sde, model, {}, c, w, 2))(x, t)
  cond, uncond = score(labels, 1.0), score(jnp.full(6, 2), 1.0)
  np.testing.assert_allclose(score(labels, 0.0), uncond, rtol=1e-6)
  np.testing.assert_allclose(score(labels, 3.0), uncond + 3.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
  component_scores = [MIXTURE.component(k).score_fn(sde) for k in range(2)]
  exact = jax.jit(lambda x, t: jnp.where((labels == 0)[:, None], component_scores[0](x, t), component_scores[1](x, t)))
  exact = exact(x, t)
  np.testing.assert_allclose(cond, exact, rtol=1e-6)
  # w = 1 is the conditional sampler itself (the issue's "w = 0" in Ho & Salimans' (1 + w) convention)
  config = _sampler_config("edm", steps=4)
  direct = lambda x, t: model.apply({}, x, sde.marginal_prob(jnp.zeros_like(x), t)[1], class_labels=jnp.zeros(8, int))
  a, _ = jax.jit(builders.build_sampler(config, sde, direct, (8, 2)))(jax.random.PRNGKey(1), 0)
  guided = conditional.guided_score_fn(sde, model, {}, jnp.zeros(8, int), 1.0, 2)
  b, _ = jax.jit(builders.build_sampler(config, sde, guided, (8, 2)))(jax.random.PRNGKey(1), 0)
  np.testing.assert_array_equal(a, b)


# ---- through the launcher ------------------------------------------------------------------------------------

def test_conditional_training_and_guided_sampling_through_the_pipeline(tmp_path):
  data = tiny_data(tmp_path / "data.npz")
  fields = {"model.label_dim": 10, "training.label_dropout": 0.2, "eval.enable_bpd": False,
            "training.n_iters": 2, "training.snapshot_freq": 2, "training.eval_freq": 0,
            "training.snapshot_sampling": False}
  workdir = tmp_path / "run"
  result = pipeline.train_and_evaluate(tiny_config(data, **fields), workdir, progress=False)
  assert result["step"] == 2
  outs = {}
  for guidance, class_label in ((1.0, 3), (2.0, -1)):
    config = tiny_config(data, **fields, **{"sampling.method": "ddim", "sampling.N": 4, "sampling.guidance": guidance,
                                            "sampling.class_label": class_label})
    outs[guidance, class_label] = pipeline.sample(config, workdir, num_samples=4, progress=False)
  # one network call per score at w = 1, two (one doubled batch) with guidance; a directory per setting
  assert outs[2.0, -1]["nfe_per_sample"] == 2 * outs[1.0, 3]["nfe_per_sample"] > 0
  names = {pathlib.Path(o["directory"]).name for o in outs.values()}
  assert names == {"step_2_ddim_class3_w1", "step_2_ddim_random_w2"}, names
  for out in outs.values():
    assert pathlib.Path(out["directory"], "grid.png").exists()
  # data without labels cannot train a class-conditional model (said before any compile)
  np.savez(tmp_path / "nolabels.npz", images=np.zeros((8, 8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="has no labels"):
    pipeline.train_and_evaluate(tiny_config(tmp_path / "nolabels.npz", **fields), tmp_path / "run2", progress=False)
