"""Progress inside one jitted call: a bar that counts network evaluations as the device makes them.

A sampler chunk or a bits/dim batch is a single jitted program (a ``lax.scan`` over hundreds of steps, or an
adaptive ODE solve) that can run for minutes with nothing to show. :func:`count_calls` wraps a score (or any)
function so that every evaluation inside the program sends one ``jax.debug.callback`` to the host, where the
bar of :func:`bar` advances. The callback takes no operand, so nothing of the computation waits for it; the
values are the same up to float rounding (XLA may fuse the program around the callbacks differently: 2e-6
relative after a 50-step PC sampler, bit-identical for the Heun, EDM and ODE samplers in tests/test_progress.py).
The cost is one host callback per network evaluation, measured in docs/reliability.md. Wrap only where a bar is
shown: the pipeline does so only with ``progress=True``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import jax
from tqdm.auto import tqdm

__all__ = ["count_calls", "bar"]

_lock = threading.Lock()
_active: list = []  # the bar evaluations advance (at most one), with its weight per callback


def _advance(weight) -> None:
  with _lock:
    if _active:
      _active[0].update(float(weight))


def count_calls(fn: Callable, weight: float = 1.0) -> Callable:
  """``fn`` that advances the active :func:`bar` by ``weight`` each time it is evaluated (on the device, inside
  jit, scan, ODE solves and their derivatives). ``weight``: network evaluations per call (2 for a guided score
  on a doubled batch), divided by the number of devices a sharded program runs the callback on."""

  def wrapped(*args, **kwargs):
    jax.debug.callback(_advance, weight)  # no operand: nothing of the computation waits for it or changes
    return fn(*args, **kwargs)

  return wrapped


@contextlib.contextmanager
def bar(desc: str, total: float | None = None, *, enabled: bool = True, unit: str = "NFE") -> Iterator[tqdm | None]:
  """A nested tqdm bar for the evaluations counted by :func:`count_calls` while the block runs (``total``:
  the expected count, e.g. the previous chunk's NFE; None while unknown). Yields the tqdm bar (None when not
  ``enabled``); waits for the pending callbacks before closing it."""
  if not enabled:
    yield
    return
  progress = tqdm(total=total, desc=desc, unit=unit, leave=False, position=1, dynamic_ncols=True)
  with _lock:
    _active[:] = [progress]
  try:
    yield progress
  finally:
    jax.effects_barrier()
    with _lock:
      _active.clear()
    progress.close()
