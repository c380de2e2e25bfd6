"""Item 1 of issue 16: one writer per workdir (an flock on WORKDIR/.lock, released by the kernel on SIGKILL)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from helpers import ROOT
from reliability_common import digest, env, launcher, launcher_argv, tiny_data

from score_jax.pipeline import workdir as workdir_lib


def test_lock_is_exclusive_reentrant_and_names_its_holder(tmp_path):
  with workdir_lib.lock(tmp_path, "train"):
    with workdir_lib.lock(tmp_path, "eval"):  # the same process again: --checkpoint=all inside an eval
      pass
    info = workdir_lib.holder(tmp_path)
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["mode"] == "train"
    # another process (a child holding its own open file description) is refused at once
    code = ("import sys; from score_jax.pipeline import workdir as w\n"
            "try:\n  w.lock(sys.argv[1], 'sample').__enter__()\nexcept w.WorkdirLockedError as e:\n"
            "  print(e); sys.exit(3)\n")
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                           env=env(tmp_path), timeout=60)
    assert child.returncode == 3, child.stderr
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in child.stdout and "Nothing was written" in child.stdout
  with workdir_lib.lock(tmp_path, "sample"):  # released on exit
    pass


@pytest.mark.slow  # 75 s on 2 busy cores: a real training compiles first
def test_second_training_fails_fast_and_sigkill_releases_the_lock(tmp_path):
  """Two trainings at once for real: the second exits non-zero within seconds naming the first's pid and host,
  and changes nothing; SIGKILL of the first releases the lock."""
  data = tiny_data(tmp_path / "data.npz")
  workdir = tmp_path / "run"
  first = subprocess.Popen(launcher_argv(data, workdir, "--step_lines",
                                         overrides={"training.n_iters": 100000, "training.snapshot_freq": 0}),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env(tmp_path), cwd=ROOT)
  try:
    for line in first.stdout:  # the first run is training: its checkpoint of step 2 is committed
      if line.strip() == "step 2":
        break
    else:
      pytest.fail(f"the first training ended without a step line (exit {first.wait()})")
    first.send_signal(signal.SIGSTOP)  # holds the lock, writes nothing meanwhile
    time.sleep(0.5)
    before = digest(workdir)
    t0 = time.time()
    second = launcher(data, workdir, tmp_path=tmp_path, timeout=120)
    seconds = time.time() - t0
    assert second.returncode != 0
    assert f"is in use by pid {first.pid} on host {socket.gethostname()} (--mode train" in second.stderr
    assert digest(workdir) == before
    print(f"second writer refused after {seconds:.1f} s (interpreter start and config included)")
  finally:
    first.send_signal(signal.SIGKILL)
    first.wait()
  with workdir_lib.lock(workdir, "train"):  # the kernel dropped the killed process's lock
    assert workdir_lib.holder(workdir)["pid"] == os.getpid()
