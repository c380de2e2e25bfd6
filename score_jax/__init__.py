"""score_jax: Score-based generative modeling through SDEs (Song et al., ICLR 2021) in functional JAX."""

from score_jax import xla_cpu

xla_cpu.apply()  # before any submodule imports JAX; see score_jax/xla_cpu.py

from score_jax import edm, gmm, likelihood, losses, sampling, sde_lib  # noqa: E402

__version__ = "0.1.0"

__all__ = ["edm", "gmm", "likelihood", "losses", "sampling", "sde_lib", "__version__"]
