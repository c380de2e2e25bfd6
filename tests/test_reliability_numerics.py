"""Item 9 of issue 16: the VP / sub-VP marginal std near t = 0 in float32; model.num_scales=0 named."""

import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import sde_lib


@pytest.mark.parametrize("name", ["vpsde", "subvpsde"])
@pytest.mark.parametrize("t", [1e-5, 1e-3, 0.5, 1.0])
def test_marginal_std_in_float32_matches_float64(name, t):
  sde = sde_lib.SDES[name](beta_min=0.1, beta_max=20.0, N=1000)
  _, std = sde.marginal_prob(jnp.zeros((1, 2), jnp.float32), jnp.full((1,), t, jnp.float32))
  lmc = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1  # float64 reference
  exact = np.sqrt(-np.expm1(2 * lmc)) if name == "vpsde" else -np.expm1(2 * lmc)
  assert np.asarray(std).dtype == np.float32
  # 1 - exp(2 lmc) in float32 is 1.2e-4 off (relative) at t = 1e-5; -expm1 is within float32 rounding
  np.testing.assert_allclose(np.asarray(std)[0], exact, rtol=2e-6)


@pytest.mark.parametrize("name", ["vesde", "vpsde", "subvpsde"])
def test_zero_scales_names_the_config_field(name):
  with pytest.raises(ValueError, match=r"SDE.N must be a positive integer .* got 0 \(model.num_scales in a config\)"):
    sde_lib.SDES[name](N=0)
