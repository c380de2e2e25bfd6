"""The log levels of the command lines: score_jax at INFO, the libraries' INFO chatter (orbax's ~30 lines per
checkpoint, absl, JAX's backend probing) at WARNING unless ``--verbose``.

Importing this module changes nothing; the entry points call :func:`configure` once.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["configure", "VERBOSE_FLAG", "QUIET_LOGGERS"]

VERBOSE_FLAG = "verbose"  # the command-line flag that keeps the libraries' INFO logs
QUIET_LOGGERS = ("absl", "orbax", "jax", "etils", "tensorflow", "tensorstore")  # orbax logs through absl


def configure(verbose: bool = False) -> None:
  """score_jax's own messages at INFO on stderr (``HH:MM:SS LEVEL message``); the libraries of
  :data:`QUIET_LOGGERS` at WARNING (INFO with ``verbose``)."""
  root = logging.getLogger()
  if not root.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root.addHandler(handler)
  root.setLevel(logging.INFO)
  level = logging.INFO if verbose else logging.WARNING
  for name in QUIET_LOGGERS:
    logging.getLogger(name).setLevel(level)
  try:
    from absl import logging as absl_logging
  except ImportError:  # absl is a dependency of orbax; without it there is nothing to quiet
    return
  absl_logging.set_verbosity(absl_logging.INFO if verbose else absl_logging.WARNING)
