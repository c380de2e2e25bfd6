"""score_jax: Score-based generative modeling through SDEs (Song et al., ICLR 2021) in functional JAX.

Importing score_jax changes no environment variable and no global library state, and imports no JAX: the
submodules listed in ``__all__`` load when first used (``score_jax.sampling`` or ``from score_jax import
sampling``), so that the ``python -m score_jax.*`` commands check their command line before JAX loads.
Those commands apply score_jax's CPU default for XLA; a library user who wants it calls
``score_jax.xla_cpu.apply()`` before JAX's first computation (see score_jax/xla_cpu.py).
"""

import importlib

__version__ = "0.1.0"

__all__ = ["edm", "gmm", "likelihood", "losses", "sampling", "sde_lib", "xla_cpu", "__version__"]
_LAZY = frozenset(__all__) - {"__version__"}


def __getattr__(name: str):
  if name in _LAZY:
    return importlib.import_module(f"{__name__}.{name}")
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
  return sorted(set(globals()) | _LAZY)
