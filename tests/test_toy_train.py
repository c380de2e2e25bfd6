"""Training of the 2-D default: determinism in (seed, step), the seed is used, per-example draws that do not
depend on the batch split, resume from the orbax checkpoint, clear config and checkpoint errors."""

import importlib.util

import jax
import numpy as np
import pytest
from helpers import ROOT

from score_jax import builders, gmm
from score_jax.pipeline import toy


def tiny_config(**overrides):
  spec = importlib.util.spec_from_file_location("gmm2d", ROOT / "configs" / "toy" / "gmm2d.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.training.n_iters = 20
  config.training.n_jitted_steps = 10
  config.training.batch_size = 64
  config.model.features = (32, 32)
  for key, value in overrides.items():
    *section, field = key.split(".")
    (config[section[0]] if section else config)[field] = value
  return config


def leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(state["params"])]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The tiny config trained for 20 steps: ``(workdir, result of toy.train)``."""
  workdir = tmp_path_factory.mktemp("trained")
  return workdir, toy.train(tiny_config(), str(workdir), progress=False)


def test_same_seed_same_weights_and_seed_is_used(trained, tmp_path):
  a = trained[1]
  b = toy.train(tiny_config(), str(tmp_path / "b"), progress=False)
  c = toy.train(_with_seed(7), str(tmp_path / "c"), progress=False)
  for x, y in zip(leaves(a["state"]), leaves(b["state"])):
    np.testing.assert_array_equal(x, y)
  assert any(not np.array_equal(x, y) for x, y in zip(leaves(a["state"]), leaves(c["state"])))
  assert int(a["state"]["step"]) == 20 and len(a["loss_history"]) == 20


def _with_seed(seed):
  config = tiny_config()
  config.seed = seed
  return config


@pytest.mark.parametrize("loss", ["ism", "ssm", "ssm_vr"])
def test_other_objectives_train(tmp_path, loss):
  out = toy.train(tiny_config(**{"training.loss": loss}), str(tmp_path), progress=False)
  assert np.all(np.isfinite(out["loss_history"]))


def test_config_errors_before_work(tmp_path):
  with pytest.raises(ValueError, match=r"n_iters \(25\).*multiple.*n_jitted_steps \(10\)"):
    toy.train(tiny_config(**{"training.n_iters": 25}), str(tmp_path), progress=False)
  with pytest.raises(ValueError, match="Unknown training.loss 'sm'"):
    toy.train(tiny_config(**{"training.loss": "sm"}), str(tmp_path), progress=False)
  with pytest.raises(ValueError, match="Unknown predictor 'heun'"):
    toy.sample(tiny_config(**{"sampling.predictor": "heun"}), None, jax.random.PRNGKey(0), progress=False)


def test_checkpoint_of_another_model_is_refused(trained):
  workdir, _ = trained
  with pytest.raises(ValueError, match="does not match config.model"):
    toy.load_state(tiny_config(**{"model.features": (16, 16)}), str(workdir))
  # evaluation needs only the parameters to fit: other SDE settings and another seed load
  state = toy.load_state(tiny_config(**{"model.num_scales": 50, "seed": 3}), str(workdir))
  assert int(state["step"]) == 20 and set(state) == {"step", "params", "ema_params"}


def test_resume_continues_the_same_run_and_refuses_another_config(trained, tmp_path):
  part = toy.train(tiny_config(**{"training.n_iters": 10}), str(tmp_path), progress=False)
  assert part["start_step"] == 0 and int(part["state"]["step"]) == 10
  for other in ({"seed": 7}, {"model.features": (16, 16)}):  # a checkpoint of another config is never resumed
    with pytest.raises(ValueError, match="belongs to another config"):
      toy.train(tiny_config(**other), str(tmp_path), progress=False)
  resumed = toy.train(tiny_config(), str(tmp_path), progress=False)
  assert resumed["start_step"] == 10 and len(resumed["loss_history"]) == 10
  straight = trained[1]  # 20 steps in one call: the resumed run is the same run, bit for bit
  np.testing.assert_array_equal(resumed["loss_history"], straight["loss_history"][10:])
  for x, y in zip(leaves(resumed["state"]), leaves(straight["state"])):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def params_and_batch():
  config = tiny_config()
  model, optimizer = builders.build_model(config), builders.build_optimizer(config)
  params = toy.init_state(jax.random.PRNGKey(0), model, optimizer, 2)["params"]
  draw = jax.jit(toy.draw_batch, static_argnums=(0, 2))
  mixture, key = gmm.default_mixture(), jax.random.PRNGKey(1)
  x = draw(mixture, key, 4)
  np.testing.assert_array_equal(draw(mixture, key, 2, 2), x[2:])  # example i's data come from its own key
  return params, x, key


@pytest.mark.parametrize("loss", ["dsm", "ism", "ssm", "ssm_vr"])
def test_per_example_draws_do_not_depend_on_the_batch_split(params_and_batch, loss):
  params, x, key = params_and_batch
  config = tiny_config(**{"training.loss": loss, "training.n_projections": 2})
  sde, model = builders.build_sde(config), builders.build_model(config)
  loss_fn = jax.jit(toy.make_loss_fn(config, model, sde))  # jitted: op by op, the ism Jacobians take ~30 s
  halves = (loss_fn(params, x[:2], key, 0) + loss_fn(params, x[2:], key, 2)) / 2
  np.testing.assert_allclose(halves, loss_fn(params, x, key, 0), rtol=1e-5)


def test_a_legacy_msgpack_workdir_is_refused_with_a_retrain_message(tmp_path):
  (tmp_path / "checkpoint.msgpack").write_bytes(b"\x80")
  with pytest.raises(FileNotFoundError, match="older score_jax.*retrain"):
    toy.load_state(tiny_config(), str(tmp_path))
  with pytest.raises(FileExistsError, match="older score_jax.*retrain"):
    toy.train(tiny_config(), str(tmp_path), progress=False)


def test_an_existing_model_is_not_overwritten(tmp_path):
  toy.train(tiny_config(), str(tmp_path), progress=False)
  before = (tmp_path / toy.CHECKPOINT).read_bytes()
  with pytest.raises(FileExistsError, match="already holds a trained model.*--mode=eval"):
    toy.train(_with_seed(3), str(tmp_path), progress=False)
  assert (tmp_path / toy.CHECKPOINT).read_bytes() == before
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["20"]
  toy.train(tiny_config(**{"training.overwrite": True}), str(tmp_path), progress=False)
