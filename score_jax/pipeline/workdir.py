"""One writer per work directory: an OS lock on ``WORKDIR/.lock`` held for a whole train / eval / sample call.

Two processes writing one workdir delete each other's unfinished checkpoints (orbax removes temporary
directories it did not finalise), so every mode that writes there takes this lock first, before it opens the
checkpoints. The lock is ``fcntl.flock`` on an open file: the kernel drops it when the process ends, however
it ends (SIGKILL included), so a stale lock file never blocks a later run. The file records who holds it
(pid, host, mode, start time), and a second writer fails at once with an error naming them. A normal release
removes the file (and the workdir when the call created it and wrote nothing), so a command that fails before
any work leaves no trace.

The lock is re-entrant within a process (``--checkpoint=all`` evaluates each checkpoint under the lock it
already holds). With several hosts only host 0 takes it (the others write nothing to the workdir); ``flock``
on network filesystems is only as good as the filesystem's lock support.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket
import threading
import time
from typing import Iterator

__all__ = ["LOCK_NAME", "WorkdirLockedError", "lock", "holder"]

LOCK_NAME = ".lock"

_HELD: dict[str, int] = {}  # resolved workdir -> depth of the locks this process holds on it
_GUARD = threading.Lock()


class WorkdirLockedError(FileExistsError):
  """Another process holds the workdir's lock (an expected user error: one line at the command line)."""


def holder(workdir) -> dict | None:
  """What the lock file of ``workdir`` says about its last holder (pid, host, mode, since), or None."""
  try:
    return json.loads((pathlib.Path(workdir) / LOCK_NAME).read_text() or "null")
  except (OSError, ValueError):
    return None


def _describe(info: dict | None) -> str:
  if not info:
    return "another process (its lock file names no holder yet)"
  since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
  return f"pid {info.get('pid')} on host {info.get('host')} (--mode {info.get('mode')}, since {since})"


@contextlib.contextmanager
def lock(workdir, mode: str, *, enabled: bool = True) -> Iterator[pathlib.Path]:
  """Hold the exclusive lock of ``workdir`` (created if needed) for the ``with`` block.

  Args:
    workdir: the run's directory.
    mode: what the holder does (``'train'``, ``'eval'``, ``'sample'``), recorded for the error of a second writer.
    enabled: take the lock at all (False on hosts other than 0).

  Raises:
    WorkdirLockedError: another process holds it; the message names its pid and host. Nothing is written.
  """
  path = pathlib.Path(workdir)
  if not enabled:
    yield path
    return
  created = not path.exists()
  path.mkdir(parents=True, exist_ok=True)
  name = str(path.resolve())
  with _GUARD:
    if _HELD.get(name):
      _HELD[name] += 1
      fd = None
    else:
      fd = _acquire(path / LOCK_NAME, path, mode)
      _HELD[name] = 1
  try:
    yield path
  finally:
    with _GUARD:
      _HELD[name] -= 1
      if fd is not None:
        del _HELD[name]
        _release(fd, path / LOCK_NAME, path if created else None)


def _acquire(lock_path: pathlib.Path, workdir: pathlib.Path, mode: str) -> int:
  while True:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      raise WorkdirLockedError(
          f"{workdir} is in use by {_describe(holder(workdir))}: two writers of one workdir destroy each other's "
          f"checkpoints. Wait for it to finish, stop it, or use another --workdir. Nothing was written.") from None
    try:  # the holder before us may have removed the file as it released it: then lock the new one
      same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(), mode=mode, since=time.time())).encode())
  os.fsync(fd)
  return fd


def _release(fd: int, lock_path: pathlib.Path, created: pathlib.Path | None) -> None:
  """Remove the lock file while still holding it (a waiting process then sees another inode and retries), and
  the workdir when this call created it and left it empty: a command that fails up front writes nothing."""
  try:
    lock_path.unlink()
  except FileNotFoundError:
    pass
  fcntl.flock(fd, fcntl.LOCK_UN)
  os.close(fd)
  if created is not None:
    try:
      created.rmdir()
    except OSError:  # not empty: the run wrote there
      pass
