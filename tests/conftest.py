"""Test configuration: strict rank promotion (as diffrax does), fixed seeds, paths to ../shared."""

import functools
import os
import pathlib

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests build the same small networks many times; the persistent compilation cache turns repeats into loads.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  import tempfile

  jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "score_jax_test_jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("SCORE_JAX_SHARED", ROOT.parent / "shared"))
CORE_FIXTURES = SHARED / "fixtures" / "score_sde_pytorch" / "core"


def pytest_collection_modifyitems(config, items):
  if os.environ.get("SCORE_JAX_SLOW") == "1":
    return
  skip_slow = pytest.mark.skip(reason="slow test: set SCORE_JAX_SLOW=1 to run it")
  for item in items:
    if "slow" in item.keywords:
      item.add_marker(skip_slow)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


@pytest.fixture
def key():
  return jax.random.PRNGKey(0)


def load_core_fixture(name: str):
  """The original PyTorch core fixture ``name`` (vesde/vpsde/subvpsde), or skip with the reason."""
  path = CORE_FIXTURES / f"{name}.npz"
  if not path.exists():
    pytest.skip(f"reference fixture {path} not found (../shared is absent); set SCORE_JAX_SHARED to its path")
  return dict(np.load(path))


@functools.lru_cache(maxsize=None)
def experiment(config_path: str):
  """``run_lib.setup`` of a config file under the repository root (shapes only), built once per test session."""
  from score_jax import configs_loader, run_lib

  return run_lib.setup(configs_loader.load_config(ROOT / config_path))
