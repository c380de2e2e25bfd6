"""Test configuration: strict rank promotion (as diffrax does), fixed seeds, paths to ../shared."""

import os

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
# Tests build the same small networks many times; the persistent compilation cache turns repeats into loads.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
  import tempfile

  jax.config.update("jax_compilation_cache_dir", os.path.join(tempfile.gettempdir(), "score_jax_test_jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)



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
