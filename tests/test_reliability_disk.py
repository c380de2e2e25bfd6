"""Item 9 of issue 16 (a full disk): a save that fails removes its partial files; the checkpoints before it stay.

The disk is made full for real: a 1.2 MB tmpfs (the tests run as root; skipped where mounting is not allowed).
"""

import subprocess

import jax.numpy as jnp
import numpy as np
import pytest
from reliability_common import digest

from score_jax import checkpoints


@pytest.fixture
def small_disk(tmp_path):
  where = tmp_path / "disk"
  where.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(where)], capture_output=True,
                           text=True)
  if mounted.returncode != 0:
    pytest.skip(f"cannot mount a small tmpfs to fill (needs root and CAP_SYS_ADMIN): {mounted.stderr.strip()}")
  try:
    yield where
  finally:
    subprocess.run(["umount", str(where)], check=False)


def test_a_save_on_a_full_disk_removes_its_partial_files_and_keeps_the_one_before(small_disk):
  rng = np.random.default_rng(0)
  state = dict(params={"w": jnp.asarray(rng.random(100_000, dtype=np.float32))},
               ema_params={"w": jnp.asarray(rng.random(100_000, dtype=np.float32))}, opt_state={"m": jnp.zeros(4)},
               step=jnp.int32(1))
  ckpts = checkpoints.Checkpointer(small_disk, state, snapshot_freq=None, preemption_freq=1)
  ckpts.save(state, 1)  # 0.8 MB: a second one does not fit beside it
  before = digest(small_disk / "checkpoints")
  with pytest.raises(checkpoints.CheckpointWriteError, match=r"could not write the checkpoint of step 2 .*No space "
                     r"left on device.*partial files were removed and the checkpoints before it are intact \(\[1\]\)"):
    ckpts.save(dict(state, step=jnp.int32(2)), 2)
  assert sorted(p.name for p in (small_disk / "checkpoints").iterdir()) == ["1"]
  assert digest(small_disk / "checkpoints") == before
  free = subprocess.run(["df", "-k", "--output=avail", str(small_disk)], capture_output=True, text=True).stdout
  assert int(free.split()[-1]) > 300  # the partial write's space was given back
  assert int(ckpts.restore_latest()["step"]) == 1
  ckpts.close()  # the failed save is not raised again (the training loop closes its checkpointer in a finally)
