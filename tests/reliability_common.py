"""What the reliability tests share: the tiny launcher in a subprocess, tiny data, and file digests."""

import hashlib
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
from helpers import CONFIG, ROOT, TINY


def tiny_data(path: pathlib.Path, n: int = 24) -> pathlib.Path:
  rng = np.random.default_rng(0)
  np.savez(path, images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), labels=rng.integers(0, 10, n))
  return path


def override_flags(data: pathlib.Path, **overrides) -> list[str]:
  flags = []
  for name, value in {**TINY, "data.root": str(data), **overrides}.items():
    text = f"({','.join(map(str, value))},)" if isinstance(value, tuple) else str(value)
    flags.append(f"--config.{name}={text}")
  return flags


def env(tmp_path, **extra) -> dict:
  """The environment of a launcher subprocess: CPU, and the test session's persistent compilation cache."""
  cache = jax.config.jax_compilation_cache_dir or str(tmp_path.parent / "jax_cache")
  return dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
              **extra)


def launcher_argv(data, workdir, *flags, overrides=None) -> list[str]:
  return [sys.executable, "-m", "score_jax.main", f"--config={CONFIG}", f"--workdir={workdir}", "--progress=false",
          *flags, *override_flags(data, **(overrides or {}))]


def launcher(data, workdir, *flags, overrides=None, tmp_path, timeout=300):
  return subprocess.run(launcher_argv(data, workdir, *flags, overrides=overrides), capture_output=True, text=True,
                        timeout=timeout, env=env(tmp_path), cwd=ROOT)


def digest(directory: pathlib.Path) -> dict[str, str]:
  """sha256 of every file under ``directory`` (relative path -> hex)."""
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(directory).rglob("*")) if p.is_file()}
