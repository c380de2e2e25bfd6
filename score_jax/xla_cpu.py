"""A default for XLA's CPU backend, applied by the command-line entry points before JAX starts its CPU client.

jaxlib 0.10 hands convolutions, dots and reductions on the CPU to YNNPACK fusions. Its convolutions are
slow for the weight gradients of a training step: on a 2-core Xeon, the weight gradient of a 3x3, 256 to
256 channel convolution at 32x32 ran at 23 GFLOP/s through YNNPACK and at 118 GFLOP/s through XLA's
own (Eigen) convolution, and the full DDPM++ CIFAR-10 training step (B=8) took 6.6-8.0 s with the
default and 4.7 s with YNNPACK kept for reductions and dots only, in interleaved runs (docs/benchmarks.md,
pass F). Turning YNNPACK off altogether is not the answer: XLA's own emitter is slow on the GroupNorm
backward's reductions (a profile showed them at ~2 s of a 10 s step).

So when JAX has not been told otherwise, :func:`apply` adds
``--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``
to ``XLA_FLAGS``. It does nothing when

- ``XLA_FLAGS`` already sets that flag (the user's choice wins);
- ``SCORE_JAX_KEEP_XLA_FLAGS`` is set to a non-empty value other than ``0`` (opt out);
- the installed jaxlib is outside :data:`TESTED_JAXLIB`: XLA aborts the process on a flag it does not
  know, and other releases may not have this one, or may not need it.

Importing score_jax does not apply it (importing the library changes no environment variable): every
``python -m score_jax.*`` entry point applies it (``score_jax.cli.run``), and a library user who wants it
makes one call before JAX's first computation::

  import score_jax
  score_jax.xla_cpu.apply()

The flag is read when JAX creates its CPU client (the first computation or device query), so it has no
effect in a process that has already computed with JAX; importing JAX first is fine. It concerns the
CPU backend only; GPU and TPU runs are unaffected. Results agree with the default to float32 rounding
(another convolution implementation sums in another order).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
from typing import MutableMapping

__all__ = ["FLAG_NAME", "FLAG", "OPT_OUT_ENV", "TESTED_JAXLIB", "flags_with_defaults", "apply"]

FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
FLAG = f"--{FLAG_NAME}=LIBRARY_FUSION_TYPE_REDUCE,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"
OPT_OUT_ENV = "SCORE_JAX_KEEP_XLA_FLAGS"
# jaxlib releases [low, high) whose CPU backend was measured with and without the flag.
TESTED_JAXLIB = ((0, 10), (0, 11))


def _version_tuple(version: str) -> tuple[int, ...]:
  return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def flags_with_defaults(xla_flags: str, jaxlib_version: str | None, opt_out: str | None = None) -> str | None:
  """The ``XLA_FLAGS`` value with score_jax's CPU default added, or None when it should stay as it is."""
  if opt_out not in (None, "", "0"):
    return None
  if jaxlib_version is None:
    return None
  low, high = TESTED_JAXLIB
  if not low <= _version_tuple(jaxlib_version)[:2] < high:
    return None
  if FLAG_NAME in xla_flags:
    return None
  return f"{xla_flags} {FLAG}".strip()


def apply(environ: MutableMapping[str, str] | None = None) -> bool:
  """Add the CPU default to ``environ['XLA_FLAGS']`` (``os.environ`` by default); True if it was added."""
  environ = os.environ if environ is None else environ
  try:
    jaxlib_version = importlib.metadata.version("jaxlib")
  except importlib.metadata.PackageNotFoundError:
    jaxlib_version = None
  flags = flags_with_defaults(environ.get("XLA_FLAGS", ""), jaxlib_version, environ.get(OPT_OUT_ENV))
  if flags is None:
    return False
  environ["XLA_FLAGS"] = flags
  return True
