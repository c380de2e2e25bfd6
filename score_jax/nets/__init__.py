"""Image score networks with the original Score-SDE parameter trees (NHWC).

- :mod:`score_jax.nets.layers`: DDPM building blocks shared by the networks.
- :mod:`score_jax.nets.layerspp`, :mod:`score_jax.nets.up_or_down_sampling`: NCSN++ blocks, FIR resampling.
- :class:`NCSNpp`: NCSN++ / DDPM++ (``model.name = 'ncsnpp'``).
- :class:`DDPM` (``'ddpm'``), :class:`NCSNv2` / :class:`NCSNv2_128` / :class:`NCSNv2_256`
  (``'ncsnv2_64'``, ``'ncsnv2_128'``, ``'ncsnv2_256'``) and :class:`NCSN` (``'ncsn'``, NCSN v1).
"""

from score_jax.nets.ddpm import DDPM
from score_jax.nets.ncsnpp import NCSNpp
from score_jax.nets.ncsnv2 import NCSN, NCSNv2, NCSNv2_128, NCSNv2_256

__all__ = ["NCSNpp", "DDPM", "NCSN", "NCSNv2", "NCSNv2_128", "NCSNv2_256"]
