"""score_jax: Score-based generative modeling through SDEs (Song et al., ICLR 2021) in functional JAX."""

from score_jax import gmm, likelihood, losses, sampling, sde_lib

__version__ = "0.1.0"

__all__ = ["gmm", "likelihood", "losses", "sampling", "sde_lib", "__version__"]
