"""What the reliability tests share: the tiny launcher in a subprocess, tiny data, and file digests."""

import hashlib
import pathlib
import subprocess

from helpers import ROOT, env, launcher_argv, override_flags, tiny_data  # noqa: F401 (shared)


def launcher(data, workdir, *flags, overrides=None, tmp_path, timeout=300):
  return subprocess.run(launcher_argv(data, workdir, *flags, overrides=overrides), capture_output=True, text=True,
                        timeout=timeout, env=env(tmp_path), cwd=ROOT)


def digest(directory: pathlib.Path) -> dict[str, str]:
  """sha256 of every file under ``directory`` (relative path -> hex)."""
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(pathlib.Path(directory).rglob("*")) if p.is_file()}
