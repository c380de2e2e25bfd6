"""Image score networks with the original Score-SDE parameter trees (NHWC).

- :mod:`score_jax.nets.layers`: DDPM building blocks shared by the networks.
- :mod:`score_jax.nets.layerspp`, :mod:`score_jax.nets.up_or_down_sampling`: NCSN++ blocks, FIR resampling.
- :class:`NCSNpp`: NCSN++ / DDPM++ (``model.name = 'ncsnpp'``).
"""

from score_jax.nets.ncsnpp import NCSNpp

__all__ = ["NCSNpp"]
