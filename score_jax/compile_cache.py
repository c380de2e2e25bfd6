"""The persistent compilation cache of the command-line tools: a relaunch loads its programs instead of
compiling them again (30-40 s per launch on a CPU for the image models).

Location: ``$SCORE_JAX_COMPILE_CACHE`` if set, else ``$XDG_CACHE_HOME/score_jax/jax``, else
``~/.cache/score_jax/jax``. Opt out with ``SCORE_JAX_NO_COMPILE_CACHE=1``. A cache directory already chosen
for JAX (``JAX_COMPILATION_CACHE_DIR`` or ``jax.config``) is kept. The entries are keyed by JAX on the program,
the JAX / XLA versions and the device, so one directory serves every run and version; delete it to reclaim the
space.

Importing this module changes nothing; the entry points call :func:`enable` once, before their first compile.
"""

from __future__ import annotations

import logging
import os
import pathlib

__all__ = ["enable", "default_dir", "ENV_DIR", "ENV_DISABLE", "MIN_COMPILE_SECS"]

log = logging.getLogger(__name__)

ENV_DIR = "SCORE_JAX_COMPILE_CACHE"
ENV_DISABLE = "SCORE_JAX_NO_COMPILE_CACHE"
MIN_COMPILE_SECS = 1.0  # programs that compile faster are not worth a file
_OFF = ("1", "true", "yes", "on")


def default_dir() -> pathlib.Path:
  """Where :func:`enable` puts the cache when neither JAX nor ``$SCORE_JAX_COMPILE_CACHE`` names one."""
  if os.environ.get(ENV_DIR):
    return pathlib.Path(os.environ[ENV_DIR]).expanduser()
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(base) / "score_jax" / "jax"


def enable(directory=None, *, min_compile_secs: float = MIN_COMPILE_SECS) -> pathlib.Path | None:
  """Turn JAX's persistent compilation cache on (for this process); returns its directory, or None when opted
  out (``$SCORE_JAX_NO_COMPILE_CACHE``) or when the directory cannot be created (a read-only home: a warning,
  and runs compile as before).

  Args:
    directory: the cache directory (default: an existing JAX setting, else :func:`default_dir`).
    min_compile_secs: cache only programs that took at least this long to compile.
  """
  if os.environ.get(ENV_DISABLE, "").strip().lower() in _OFF:
    return None
  import jax

  if directory is None:
    directory = jax.config.jax_compilation_cache_dir or default_dir()
  directory = pathlib.Path(directory).expanduser()
  try:
    directory.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    log.warning("no persistent compilation cache (%s: %s); set $%s to a writable directory, or $%s=1", directory, e,
                ENV_DIR, ENV_DISABLE)
    return None
  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
  log.debug("persistent compilation cache in %s", directory)
  return directory
