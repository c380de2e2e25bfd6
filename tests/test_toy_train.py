"""Training of the 2-D default: determinism in (seed, step), the seed is used, clear config errors."""

import importlib.util

import jax
import numpy as np
import pytest
from helpers import ROOT

from score_jax import toy


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
    section, field = key.split(".")
    config[section][field] = value
  return config


def leaves(state):
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(state["params"])]


def test_same_seed_same_weights_and_seed_is_used(tmp_path):
  a = toy.train(tiny_config(), str(tmp_path / "a"), progress=False)
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


def test_checkpoint_of_another_model_is_refused(tmp_path):
  toy.train(tiny_config(), str(tmp_path), progress=False)
  with pytest.raises(ValueError, match="does not match config.model"):
    toy.load_state(tiny_config(**{"model.features": (16, 16)}), str(tmp_path))


def test_an_existing_model_is_not_overwritten(tmp_path):
  toy.train(tiny_config(), str(tmp_path), progress=False)
  before = (tmp_path / toy.CHECKPOINT).read_bytes()
  with pytest.raises(FileExistsError, match="already holds a trained model.*--mode=eval"):
    toy.train(_with_seed(3), str(tmp_path), progress=False)
  assert (tmp_path / toy.CHECKPOINT).read_bytes() == before
  toy.train(tiny_config(**{"training.overwrite": True}), str(tmp_path), progress=False)
