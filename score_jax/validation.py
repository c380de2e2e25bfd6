"""The one integer check of score_jax's argument and config validation (a bool is not an int here)."""

from __future__ import annotations

import numpy as np

__all__ = ["is_int", "check_int"]


def is_int(value, minimum: int | None = None, maximum: int | None = None) -> bool:
  """Whether ``value`` is a Python or NumPy integer (not a bool) in ``[minimum, maximum]``."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    return False
  return (minimum is None or value >= minimum) and (maximum is None or value <= maximum)


def check_int(value, name: str, minimum: int = 1) -> int:
  """``int(value)``, or ValueError naming ``name`` unless it is an integer ``>= minimum``.

  The message says "positive int" for ``minimum=1`` and "non-negative int (0 = off)" for ``minimum=0``.
  """
  if not is_int(value, minimum):
    what = {1: "a positive int", 0: "a non-negative int (0 = off)"}.get(minimum, f"an int >= {minimum}")
    raise ValueError(f"{name} must be {what}; got {value!r}.")
  return int(value)
