"""The image training step (score_jax.train): loss goes down, EMA, warmup and clipping as the original,
fused steps equal single steps, determinism, discrete SMLD/DDPM objectives, bf16.

Fast tests use small networks on flat data: the toy ScoreMLP (through the builders) and a tiny test
network with dropout, with the training fields of the real image configs. Tiny NCSN++ runs are marked slow
(their compile alone takes about a minute on two CPU cores).
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from score_jax import builders, configs_loader, models, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIM = 4  # flat data [B, DIM]


class TinyNet(nn.Module):
  """``(x [B, D], labels [B]) -> [B, D]`` with dropout; labels may be noise levels, times or int indices."""

  width: int = 32
  dropout: float = 0.1

  @nn.compact
  def __call__(self, x, labels, train: bool = False):
    emb = models.timestep_embedding(jnp.asarray(labels, jnp.float32), 16)
    h = nn.silu(nn.Dense(self.width)(x) + nn.Dense(self.width)(emb))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return nn.Dense(x.shape[-1])(h)


def _config(path, **optim):
  config = configs_loader.load_config(ROOT / path)
  config.training.batch_size = 8
  config.training.n_jitted_steps = 3
  for name, value in optim.items():
    config.optim[name] = value
  return config


def _toy(**optim):
  config = _config("configs/toy/gmm2d.py", **optim)
  config.model.features = (16, 16)
  return config


def _setup(config, model=None, dim=DIM):
  sde = builders.build_sde(config)
  model = builders.build_model(config) if model is None else model
  optimizer = builders.build_optimizer(config)
  state = train.init_train_state(jax.random.PRNGKey(0), config, model, optimizer, (1, dim))
  return sde, model, optimizer, state


def _batch(n=8, dim=DIM, seed=1):
  return jax.random.normal(jax.random.PRNGKey(seed), (n, dim))


def _allclose_tree(a, b, **kw):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


@pytest.fixture(scope="module")
def tiny():
  """TinyNet (with dropout) on the toy VP config, its state and jitted step, fused step and loss: compiled once."""
  config = _toy(lr=1e-2, warmup=2)
  config.model.ema_rate = 0.9
  sde, model, optimizer, state = _setup(config, TinyNet(), dim=2)
  step_fn = train.make_train_step(config, model, sde, optimizer)
  return dict(config=config, sde=sde, model=model, optimizer=optimizer, state=state, step=jax.jit(step_fn),
              steps=jax.jit(train.make_fused_train_step(step_fn)),
              loss=jax.jit(train.make_loss_fn(config, model, sde)))


def test_loss_decreases_on_a_fixed_batch(tiny):
  state, x = tiny["state"], _batch(8, 2)
  key_eval = jax.random.PRNGKey(7)  # the same draws before and after training
  before = float(tiny["loss"](state.params, x, key_eval))
  history = []
  for _ in range(10):  # 30 steps, 3 per fused call
    state, metrics = tiny["steps"](state, jnp.stack([x] * 3), jax.random.PRNGKey(3))
    history.append(metrics["loss"])
  after = float(tiny["loss"](state.params, x, key_eval))
  assert int(state.step) == 30
  assert np.all(np.isfinite(np.concatenate(history)))
  assert after < 0.7 * before, (before, after)


def test_ema_follows_the_original_formula(tiny):
  state = tiny["state"]
  new, _ = tiny["step"](state, _batch(8, 2), jax.random.PRNGKey(3))
  new, _ = tiny["step"](new, _batch(8, 2), jax.random.PRNGKey(3))  # step 0 has learning rate 0 (warmup)
  old, _ = tiny["step"](state, _batch(8, 2), jax.random.PRNGKey(3))
  expected = jax.tree_util.tree_map(lambda e, p: 0.9 * e + 0.1 * p, old.ema_params, new.params)
  _allclose_tree(new.ema_params, expected, rtol=1e-6, atol=1e-7)
  moved = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), new.params, old.params)
  assert any(jax.tree_util.tree_leaves(moved))


def test_warmup_learning_rate_is_lr_times_min_step_over_warmup():
  # A constant gradient of 1 makes Adam's bias-corrected step exactly the learning rate (up to eps).
  config = _toy(lr=1e-3, warmup=4, eps=1e-12)
  optimizer = builders.build_optimizer(config)
  params = jnp.zeros((1,))
  opt_state = optimizer.init(params)
  got = []
  for _ in range(7):
    updates, opt_state = optimizer.update(jnp.ones((1,)), opt_state, params)
    got.append(-float(updates[0]))
  expected = [1e-3 * min(k / 4, 1.0) for k in range(7)]  # the original: lr * min(state.step / warmup, 1)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-12)  # fp32 bias correction


def test_gradient_clipping_is_the_originals():
  config = _toy(lr=1e-3, warmup=0, grad_clip=1.0)
  optimizer = builders.build_optimizer(config)
  params = {"a": jnp.zeros((3,)), "b": jnp.zeros((2,))}
  for grads in ({"a": jnp.array([3.0, 4.0, 0.0]), "b": jnp.array([0.0, 12.0])},  # |g| = 13 -> clipped
                {"a": jnp.array([0.3, 0.4, 0.0]), "b": jnp.array([0.0, 0.1])}):  # |g| < 1 -> unchanged
    norm = optax.tree.norm(grads)
    scale = 1.0 / jnp.maximum(norm, 1.0)  # the original's formula: g * grad_clip / max(|g|, grad_clip)
    clipped = jax.tree_util.tree_map(lambda g, scale=scale: g * scale, grads)
    _, opt_state = optimizer.update(grads, optimizer.init(params), params)
    mu = optax.tree_utils.tree_get(opt_state, "mu")  # Adam's first moment: (1 - beta1) * clipped grad
    _allclose_tree(mu, jax.tree_util.tree_map(lambda g: (1 - config.optim.beta1) * g, clipped), rtol=1e-6)


def test_weight_decay_is_decoupled_and_scaled_by_the_learning_rate():
  config = _toy(lr=1e-2, warmup=0, weight_decay=0.1, grad_clip=-1.0)
  optimizer = builders.build_optimizer(config)
  params = jnp.full((1,), 2.0)
  updates, _ = optimizer.update(jnp.ones((1,)), optimizer.init(params), params)
  # flax.optim.Adam: p - lr * adam_step - lr * weight_decay * p, with adam_step = 1 for a first gradient of 1.
  np.testing.assert_allclose(np.asarray(updates), -1e-2 * (1.0 + 0.1 * 2.0), rtol=1e-5)


def test_fused_steps_equal_single_steps(tiny):
  xs = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 2))  # [n, B, D]
  key = jax.random.PRNGKey(5)
  fused, fused_metrics = tiny["steps"](tiny["state"], xs, key)
  single, losses = tiny["state"], []
  for x in xs:
    single, metrics = tiny["step"](single, x, key)
    losses.append(metrics["loss"])
  assert int(fused.step) == int(single.step) == 3
  _allclose_tree(fused, single, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(fused_metrics["loss"], np.stack(losses), rtol=1e-6)


def test_training_is_deterministic_and_the_key_matters(tiny):
  xs = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 2))
  a, ma = tiny["steps"](tiny["state"], xs, jax.random.PRNGKey(5))
  b, mb = tiny["steps"](tiny["state"], xs, jax.random.PRNGKey(5))
  _, mc = tiny["steps"](tiny["state"], xs, jax.random.PRNGKey(6))
  _allclose_tree(a, b, rtol=0, atol=0)
  np.testing.assert_array_equal(ma["loss"], mb["loss"])
  assert not np.allclose(ma["loss"], mc["loss"])


def test_an_examples_draws_do_not_depend_on_the_rest_of_the_batch(tiny):
  # Per-example randomness (t, noise, dropout) comes from (step key, global index): a sub-batch at its offset
  # sees the same draws. The toy config averages over data dimensions, so the halves average to the whole.
  loss_fn, params = tiny["loss"], tiny["state"].params
  x, key = _batch(8, 2), jax.random.PRNGKey(9)
  whole = loss_fn(params, x, key)
  halves = (loss_fn(params, x[:4], key, 0) + loss_fn(params, x[4:], key, 4)) / 2
  np.testing.assert_allclose(whole, halves, rtol=1e-6)


@pytest.mark.parametrize("path", ["configs/ve/cifar10_ncsnpp.py", "configs/vp/cifar10_ddpmpp.py",
                                  "configs/subvp/cifar10_ddpmpp_continuous.py"])
def test_eval_losses_are_each_examples_own_loss_at_its_global_index(path):
  """make_eval_loss_fn's [B] losses (network without dropout, batched) equal the loss of each example alone at
  its global index, and their mean is the batch loss: padded rows can be masked out, batching changes nothing."""
  config = _config(path)
  sde, _, optimizer, state = _setup(config, TinyNet(), dim=DIM)
  eval_loss = jax.jit(train.make_eval_loss_fn(config, TinyNet(), sde))
  loss_fn = jax.jit(train.make_loss_fn(config, TinyNet(), sde, train=False))
  x, key = _batch(6), jax.random.PRNGKey(4)
  per_example = np.asarray(eval_loss(state.params, x, key, 10))
  assert per_example.shape == (6,) and np.all(per_example > 0)
  alone = [float(loss_fn(state.params, x[i:i + 1], key, 10 + i)) for i in range(6)]
  np.testing.assert_allclose(per_example, alone, rtol=1e-5)
  np.testing.assert_allclose(per_example.mean(), loss_fn(state.params, x, key, 10), rtol=1e-5)
  np.testing.assert_allclose(eval_loss(state.params, x[2:], key, 12), per_example[2:], rtol=1e-5)


class _TwoDropouts(nn.Module):
  """Ones through two dropout layers of rate 0.3: the outputs show both layers' masks."""

  @nn.compact
  def __call__(self, x, labels, train: bool = False):
    a = nn.Dropout(0.3, deterministic=not train)(jnp.ones_like(x))
    b = nn.Dropout(0.3)(jnp.ones_like(x), deterministic=not train)
    return jnp.concatenate([a, b], axis=-1) + 0.0 * nn.Dense(1)(x[:, :1])  # a parameter, for the params tree


def test_per_example_dropout_masks_follow_the_example_key_not_the_batch():
  model, x = _TwoDropouts(), jnp.zeros((6, 4000))
  params = model.init({"params": jax.random.PRNGKey(0)}, x, jnp.zeros(6))["params"]
  keys = train.example_keys(jax.random.PRNGKey(3), 6)
  out = np.asarray(train.make_model_fn(model, params, keys, jnp.float32)(x, jnp.zeros(6)))  # [6, 8000]
  keep = 1.0 - 0.3
  assert set(np.unique(out)) == {0.0, np.float32(1.0 / keep)}
  assert abs((out > 0).mean() - keep) < 0.01  # 48,000 draws: 5 standard deviations is 0.0105
  a, b = out[:, :4000] > 0, out[:, 4000:] > 0
  assert 0.4 < (a == b).mean() < 0.6 + 0.02  # two layers, independent masks (p^2 + q^2 = 0.58 agree)
  assert not (a[0] == a[1]).all()  # two examples, independent masks
  # example 4 alone, or first in another batch with its key: the same masks
  alone = train.make_model_fn(model, params, keys[4:5], jnp.float32)(x[:1], jnp.zeros(1))
  np.testing.assert_array_equal(np.asarray(alone)[0], out[4])
  shuffled = train.make_model_fn(model, params, keys[::-1], jnp.float32)(x, jnp.zeros(6))
  np.testing.assert_array_equal(np.asarray(shuffled)[::-1], out)
  # evaluation mode: no dropout at all
  ev = train.make_model_fn(model, params, keys, jnp.float32, train=False)(x, jnp.zeros(6))
  np.testing.assert_array_equal(np.asarray(ev), np.ones((6, 8000), np.float32))


@pytest.mark.parametrize("path,kind", [("configs/ve/cifar10_ncsnpp.py", "smld"),
                                       ("configs/vp/cifar10_ddpmpp.py", "ddpm"),
                                       ("configs/ve/cifar10_ncsnpp_continuous.py", "dsm")])
def test_objectives_of_the_image_configs_train(path, kind):
  config = _config(path, lr=1e-3, warmup=0)
  sde, model, optimizer, state = _setup(config, TinyNet())
  assert train.loss_kind(config, sde) == kind
  step = jax.jit(train.make_train_step(config, model, sde, optimizer))
  new, metrics = step(state, _batch(8, DIM), jax.random.PRNGKey(2))
  assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0 and int(new.step) == 1
  assert float(optax.tree.norm(jax.tree_util.tree_map(jnp.subtract, new.params, state.params))) > 0


def test_inconsistent_objective_is_a_clear_error():
  config = _config("configs/ve/cifar10_ncsnpp.py")
  sde = builders.build_sde(config)
  config.training.loss = "ddpm"
  with pytest.raises(ValueError, match="training.loss='ddpm'"):
    train.make_loss_fn(config, TinyNet(), sde)
  config = _config("configs/subvp/cifar10_ddpmpp_continuous.py")
  config.training.continuous = False
  with pytest.raises(ValueError, match="subVPSDE"):
    train.make_loss_fn(config, TinyNet(), builders.build_sde(config))


def test_bf16_runs_and_stays_close_to_fp32():
  config = _toy(lr=1e-2, warmup=0)
  sde, model, _, state = _setup(config, TinyNet(), dim=2)
  x, key = _batch(64, 2), jax.random.PRNGKey(4)
  fp32 = jax.jit(jax.value_and_grad(train.make_loss_fn(config, model, sde)))(state.params, x, key)
  config.training.bf16 = True
  bf16 = jax.jit(jax.value_and_grad(train.make_loss_fn(config, model, sde)))(state.params, x, key)
  assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(bf16[1]))  # fp32 master gradients
  np.testing.assert_allclose(bf16[0], fp32[0], rtol=2e-2)
  g16, g32 = (jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(g)]) for g in (bf16[1], fp32[1]))
  assert float(jnp.dot(g16, g32) / (jnp.linalg.norm(g16) * jnp.linalg.norm(g32))) > 0.99  # same direction
  np.testing.assert_allclose(jnp.linalg.norm(g16), jnp.linalg.norm(g32), rtol=5e-2)


# ---- tiny NCSN++ (slow: about a minute of compile per config on two CPU cores) -------------------------------

def _tiny_ncsnpp(path):
  config = _config(path, lr=2e-3, warmup=0)
  config.data.image_size = 8
  config.model.update(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=())
  return config


@pytest.mark.slow
@pytest.mark.parametrize("path", ["configs/ve/cifar10_ncsnpp_continuous.py", "configs/ve/cifar10_ncsnpp.py",
                                  "configs/vp/cifar10_ddpmpp.py"])
def test_tiny_ncsnpp_loss_decreases(path):
  config = _tiny_ncsnpp(path)
  sde, model, optimizer = builders.build_sde(config), builders.build_model(config), builders.build_optimizer(config)
  state = train.init_train_state(jax.random.PRNGKey(0), config, model, optimizer)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 3))
  loss_fn = jax.jit(train.make_loss_fn(config, model, sde))
  key_eval = jax.random.PRNGKey(7)
  before = float(loss_fn(state.params, x, key_eval))
  steps = jax.jit(train.make_fused_train_step(train.make_train_step(config, model, sde, optimizer)))
  state, metrics = steps(state, jnp.stack([x] * 30), jax.random.PRNGKey(3))
  assert np.all(np.isfinite(metrics["loss"]))
  assert float(loss_fn(state.params, x, key_eval)) < before
