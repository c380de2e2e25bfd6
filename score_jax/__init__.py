"""score_jax: Score-based generative modeling through SDEs (Song et al., ICLR 2021) in functional JAX.

Importing score_jax changes no environment variable and no global library state. The ``python -m
score_jax.*`` commands apply score_jax's CPU default for XLA; a library user who wants it calls
``score_jax.xla_cpu.apply()`` before JAX's first computation (see score_jax/xla_cpu.py).
"""

from score_jax import gmm, likelihood, losses, sampling, sde_lib, xla_cpu

__version__ = "0.1.0"

__all__ = ["gmm", "likelihood", "losses", "sampling", "sde_lib", "xla_cpu", "__version__"]
