"""Image score networks with the original Score-SDE parameter trees (NHWC).

- :mod:`score_jax.nets.layers`: DDPM building blocks shared by the networks.
- :mod:`score_jax.nets.layerspp`, :mod:`score_jax.nets.up_or_down_sampling`: NCSN++ blocks, FIR resampling.
- :class:`NCSNpp`: NCSN++ / DDPM++ (``model.name = 'ncsnpp'``).
"""

from score_jax.nets.ncsnpp import NCSNpp

__all__ = ["NCSNpp"]

# DDPM (model.name 'ddpm'), NCSNv2 ('ncsnv2_64', 'ncsnv2_128', 'ncsnv2_256') and NCSN v1 ('ncsn').
from score_jax.nets.ddpm import DDPM  # noqa: E402
from score_jax.nets.ncsnv2 import NCSN, NCSNv2, NCSNv2_128, NCSNv2_256  # noqa: E402

__all__ += ["DDPM", "NCSN", "NCSNv2", "NCSNv2_128", "NCSNv2_256"]
