"""The embedded 2-D default's pipeline moved to :mod:`score_jax.pipeline.toy`; these names stay for one release."""

from score_jax.pipeline.toy import *  # noqa: F403 (every public name, as score_jax.toy had them)
from score_jax.pipeline.toy import __all__  # noqa: F401
