"""Checkpoints: bit-exact round trip, retention, orbax-only restore, corrupt and foreign checkpoints, SIGTERM, SIGKILL.

The subprocess tests run this file as a script (``python tests/test_checkpoints.py loop ...``): a tiny
deterministic Adam loop on a noisy quadratic that checkpoints every 3 steps.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from helpers import run_with_kills, tree_differences

from score_jax import checkpoints as ck

SEED = 0
CONFIG_SECTIONS = {"model": {"name": "tiny", "nf": 3}, "data": {"dataset": "quadratic"}}
THIS_FILE = pathlib.Path(__file__).resolve()
REPO = THIS_FILE.parents[1]


# ---- the tiny training state and loop (also run in subprocesses) --------------------------------------------

_OPTIMIZER = optax.adam(0.05)
_TARGET = (1.0, -2.0, 3.0)
_EMA_RATE = 0.9
_NOISE_SCALE = 0.1


def _init_state(n: int = 3):
  params = {"w": jnp.zeros((n,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
  return dict(params=params, ema_params=params, opt_state=_OPTIMIZER.init(params), step=jnp.zeros((), jnp.int32))


@jax.jit
def _train_step(state):
  """One Adam step on ``|w - target - noise|^2 + (b - 1/2)^2`` with noise from ``fold_in(key, step)``."""
  noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(SEED), state["step"]), (len(_TARGET),))

  def loss(p):
    return jnp.sum((p["w"] - jnp.asarray(_TARGET) - _NOISE_SCALE * noise) ** 2) + (p["b"] - 0.5) ** 2

  grads = jax.grad(loss)(state["params"])
  updates, opt_state = _OPTIMIZER.update(grads, state["opt_state"], state["params"])
  params = optax.apply_updates(state["params"], updates)
  ema = jax.tree.map(lambda e, p: _EMA_RATE * e + (1 - _EMA_RATE) * p, state["ema_params"], params)
  return dict(params=params, ema_params=ema, opt_state=opt_state, step=state["step"] + 1)


def _checkpointer(workdir, template=None, **kwargs):
  options = dict(snapshot_freq=6, preemption_freq=3, keep_snapshots=2, config_sections=CONFIG_SECTIONS, seed=SEED)
  options.update(kwargs)
  return ck.Checkpointer(workdir, _init_state() if template is None else template, **options)


def _run_loop(workdir: str, n_steps: int, sleep: float, sigterm: bool) -> None:
  """Resume from ``workdir`` (or start), train to ``n_steps`` printing ``step N``; save and exit on SIGTERM."""
  ckpts = _checkpointer(workdir)
  state = ckpts.restore_latest() or _init_state()
  if sigterm:
    ck.install_sigterm_handler()
  while int(state["step"]) < n_steps:
    state = _train_step(state)
    step = int(state["step"])
    stop = ck.should_stop()  # read once: a signal after this line is handled at the next step
    ckpts.save(state, step, force=stop or step == n_steps)
    print(f"step {step}", flush=True)
    if stop:
      print(f"stopped {step}", flush=True)
      break
    time.sleep(sleep)
  ckpts.close()


def _reference(n_steps: int):
  state = _init_state()
  for _ in range(n_steps):
    state = _train_step(state)
  return state


def _loop_argv(workdir, n_steps, sleep, sigterm=False):
  return [sys.executable, str(THIS_FILE), "loop", str(workdir), str(n_steps), str(sleep), str(int(sigterm))]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  return env


def _listing(directory: pathlib.Path):
  return sorted((str(p.relative_to(directory)), p.stat().st_mtime_ns) for p in directory.rglob("*"))


# ---- in-process tests -------------------------------------------------------------------------------------


def _saved(workdir, n_steps: int):
  """The state after ``n_steps`` steps, saved as the checkpoint of that step in ``workdir``."""
  state = _reference(n_steps)
  with _checkpointer(workdir) as ckpts:
    assert ckpts.save(state, n_steps, force=True)
  return state


def test_round_trip_is_bit_exact(tmp_path):
  state = _saved(tmp_path, 4)
  with _checkpointer(tmp_path) as ckpts:
    restored = ckpts.restore()
    meta = ckpts.metadata(4)
  assert tree_differences(restored, state) == []
  assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(state)  # optax namedtuples back
  assert int(restored["opt_state"][0].count) == 4
  assert meta["step"] == meta["data_position"] == 4 and meta["seed"] == SEED
  assert meta["params"] == {"b": "float32[]", "w": "float32[3]"} and meta["config"] == CONFIG_SECTIONS


def test_partial_restore_reads_only_the_items_asked_for(tmp_path):
  state = _saved(tmp_path, 3)
  with _checkpointer(tmp_path) as ckpts:
    part = ckpts.restore(3, items=("ema_params", "step"))
    assert sorted(part) == ["ema_params", "step"]
    assert tree_differences(part["ema_params"], state["ema_params"]) == [] and int(part["step"]) == 3
    assert tree_differences(ckpts.restore_latest(items=("ema_params",))["ema_params"], state["ema_params"]) == []
    with pytest.raises(ValueError, match=r"items=\['nope'\]: expected a non-empty subset of"):
      ckpts.restore(3, items=("nope",))
  # A template with another optimizer state (an optim.* change): the whole state no longer restores, the EMA
  # weights do, since the optimizer state is not read at all.
  other = dict(_init_state(), opt_state=optax.chain(optax.clip_by_global_norm(1.0), _OPTIMIZER).init(
      _init_state()["params"]))
  with _checkpointer(tmp_path, template=other) as ckpts:
    with pytest.raises(ValueError, match="state tree that differs"):
      ckpts.restore(3)
    assert tree_differences(ckpts.restore(3, items=("ema_params",))["ema_params"], state["ema_params"]) == []


@pytest.mark.parametrize("keep", [2, None])
def test_retention_snapshots_and_one_preemption_checkpoint(tmp_path, keep):
  state = _init_state()
  with _checkpointer(tmp_path, snapshot_freq=4, preemption_freq=3, keep_snapshots=keep) as ckpts:
    assert not ckpts.is_due(0) and ckpts.is_due(3) and ckpts.is_due(4) and not ckpts.is_due(5)
    saved = []
    for step in range(1, 15):
      state = dict(state, step=jnp.int32(step))
      if ckpts.save(state, step):
        saved.append(step)
        snapshots = [s for s in saved if s % 4 == 0]
        kept = snapshots[-keep:] if keep else snapshots
        expected = sorted(set(kept) | {step})  # the newest checkpoint is the preemption one
        assert ckpts.all_steps() == expected, step
    assert saved == [3, 4, 6, 8, 9, 12]
    assert ckpts.latest_step() == 12
    assert not ckpts.save(state, 13)  # not due
    assert ckpts.save(dict(state, step=jnp.int32(14)), 14, force=True)
    assert ckpts.all_steps() == ([8, 12, 14] if keep else [4, 8, 12, 14])


def test_each_checkpoint_restores_with_orbax_alone(tmp_path):
  state = _train_step(_train_step(_init_state()))
  with _checkpointer(tmp_path) as ckpts:
    ckpts.save(state, 2, force=True)
  # the module docstring's snippet, no score_jax code
  mngr = ocp.CheckpointManager(tmp_path / "checkpoints")
  restored = mngr.restore(mngr.latest_step())
  mngr.close()
  item = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "2" / "state")
  for got in (restored.state, item):
    for name in ("params", "ema_params"):
      assert tree_differences(got[name], state[name]) == []
    assert int(got["step"]) == 2
    assert tree_differences(got["opt_state"][0]["mu"], state["opt_state"][0].mu) == []
  assert restored.meta["step"] == 2


def _corrupt(path: pathlib.Path, how: str) -> None:
  if how == "no_commit_marker":  # what a copy or a non-atomic file system can leave
    (path / "commit_success.txt").unlink()
  elif how == "item_without_commit_marker":
    (path / "state" / "commit_success.txt").unlink()
  elif how == "truncated_arrays":
    for f in path.glob("state/**/d/*"):
      with open(f, "r+b") as fh:
        fh.truncate(7)
  elif how == "unreadable_metadata":
    (path / "meta" / "metadata").write_text('{"fingerprint": "abc", "st')
  elif how == "no_step_metadata":
    (path / "_CHECKPOINT_METADATA").unlink()
  elif how == "empty_directory":
    shutil.rmtree(path)
    path.mkdir()
  else:
    raise ValueError(how)


@pytest.mark.parametrize("how", ["no_commit_marker", "item_without_commit_marker", "truncated_arrays",
                                 "unreadable_metadata", "no_step_metadata", "empty_directory"])
def test_restore_latest_skips_a_corrupt_checkpoint(tmp_path, how, caplog):
  states = {}
  state = _init_state()
  with _checkpointer(tmp_path) as ckpts:
    for step in range(1, 10):
      state = _train_step(state)
      states[step] = state
      ckpts.save(state, step)
    assert ckpts.all_steps() == [6, 9]
  newest = tmp_path / "checkpoints" / "9"
  _corrupt(newest, how)
  with _checkpointer(tmp_path) as ckpts, caplog.at_level(logging.WARNING, logger=ck.__name__):
    restored = ckpts.restore_latest()
    assert str(newest) in caplog.text and "skipping corrupt checkpoint" in caplog.text
    assert tree_differences(restored, states[6]) == []
    with pytest.raises(ck.CheckpointCorruptError, match=str(newest)):
      ckpts.restore(9)
    # the resumed run saves step 9 again: it replaces the corrupt directory
    assert ckpts.save(_train_step(_train_step(_train_step(restored))), 9)
    assert tree_differences(ckpts.restore_latest(), states[9]) == []


def test_interrupted_orbax_write_is_ignored_and_cleaned(tmp_path):
  state = _train_step(_init_state())
  with _checkpointer(tmp_path) as ckpts:
    ckpts.save(state, 1, force=True)
  tmp_dir = tmp_path / "checkpoints" / "3.orbax-checkpoint-tmp-1234567"  # a save killed before its rename
  (tmp_dir / "state").mkdir(parents=True)
  (tmp_dir / "state" / "junk").write_bytes(b"\0" * 10)
  with _checkpointer(tmp_path) as ckpts:
    assert ckpts.all_steps() == [1]
    assert int(ckpts.restore_latest()["step"]) == 1
  assert not tmp_dir.exists()


@pytest.mark.parametrize("change, named", [
    (dict(template=_init_state(4)), "params/w: 'float32[3]' in the checkpoint, 'float32[4]' now"),
    (dict(config_sections={**CONFIG_SECTIONS, "model": {"name": "tiny", "nf": 8}}), "model.nf: 3 in the checkpoint, 8"),
    (dict(seed=SEED + 1), "seed: 0 in the checkpoint, 1 now"),
])
def test_a_foreign_checkpoint_raises_before_anything_is_written(tmp_path, change, named):
  state = _train_step(_init_state())
  with _checkpointer(tmp_path) as ckpts:
    ckpts.save(state, 1, force=True)
  before = _listing(tmp_path)
  with _checkpointer(tmp_path, **change) as other:
    with pytest.raises(ValueError, match="first mismatches") as err:
      other.restore_latest()
    assert named in str(err.value) and str(tmp_path / "checkpoints" / "1") in str(err.value)
    template = change.get("template", state)
    with pytest.raises(ValueError, match="belongs to another config"):
      other.save(dict(template, step=jnp.int32(3)), 3)  # a fresh run into the same workdir
  assert _listing(tmp_path) == before


def test_clear_errors_and_empty_directory(tmp_path):
  state = _train_step(_init_state())
  with _checkpointer(tmp_path) as ckpts:
    assert ckpts.all_steps() == [] and ckpts.latest_step() is None
    assert ckpts.restore_latest() is None
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
      ckpts.restore()
    with pytest.raises(ValueError, match=r"state\['step'\] is 1 but save was asked for step 3"):
      ckpts.save(state, 3)
    ckpts.save(state, 1, force=True)
    with pytest.raises(FileNotFoundError, match=r"step 2 .* there are \[1\]"):
      ckpts.restore(2)
  with pytest.raises(ValueError, match="keep_snapshots"):
    _checkpointer(tmp_path, keep_snapshots=0)
  with pytest.raises(ValueError, match="lacks"):
    ck.Checkpointer(tmp_path, {"params": {}}, snapshot_freq=1, preemption_freq=None)


def test_from_config_reads_training_section(tmp_path):
  config = ml_collections.ConfigDict(dict(
      seed=SEED, model=CONFIG_SECTIONS["model"], data=CONFIG_SECTIONS["data"],
      training=dict(snapshot_freq=10, snapshot_freq_for_preemption=5, keep_snapshots=3)))
  with ck.Checkpointer.from_config(config, tmp_path, _init_state()) as ckpts:
    assert (ckpts.snapshot_freq, ckpts.preemption_freq, ckpts.keep_snapshots) == (10, 5, 3)
    assert ckpts.fingerprint == _checkpointer(tmp_path).fingerprint
  del config.training.keep_snapshots
  with ck.Checkpointer.from_config(config, tmp_path, _init_state()) as ckpts:
    assert ckpts.keep_snapshots is None  # keep all, as score_sde does


def test_stop_flag():
  assert not ck.should_stop()
  ck.request_stop()
  assert ck.should_stop()
  ck.request_stop(False)
  assert not ck.should_stop()


# ---- subprocess tests -------------------------------------------------------------------------------------


def test_sigterm_saves_the_step_reached_and_exits_cleanly(tmp_path):
  proc = subprocess.Popen(_loop_argv(tmp_path, 100_000, 0.01, sigterm=True), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=_env())
  try:
    for line in proc.stdout:
      if line.strip() == "step 4":
        proc.send_signal(signal.SIGTERM)
        break
    out, err = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  stopped = [int(line.split()[1]) for line in out.splitlines() if line.startswith("stopped")]
  assert len(stopped) == 1 and stopped[0] >= 4
  with _checkpointer(tmp_path) as ckpts:
    assert ckpts.latest_step() == stopped[0]
    assert tree_differences(ckpts.restore_latest(), _reference(stopped[0])) == []


def test_sigkill_at_random_points_then_resume_is_bit_identical(tmp_path):
  n_steps = 18
  rng = np.random.default_rng(SEED)
  kill_steps = np.sort(rng.choice(np.arange(1, n_steps - 6), size=3, replace=False))
  # a delay up to about one save lands the kill in a step, a sleep or a save
  kill_points = [(int(s), float(d)) for s, d in zip(kill_steps, rng.uniform(0, 0.2, size=3))]
  records = run_with_kills(_loop_argv(tmp_path, n_steps, 0.005), kill_points, env=_env(), timeout=60)
  assert records[0]["killed"] and not records[-1]["killed"] and records[-1]["returncode"] == 0
  for before, after in zip(records, records[1:]):
    if before["killed"] and after["first_step"] is not None:
      resumed_from = after["first_step"] - 1
      # every save completes before its "step N" line: the checkpoint of the last multiple of 3 printed exists
      assert resumed_from % 3 == 0 and resumed_from >= before["last_step"] // 3 * 3, (before, after)
  with _checkpointer(tmp_path) as ckpts:
    final = ckpts.restore_latest()
    assert ckpts.latest_step() == n_steps
  assert tree_differences(final, _reference(n_steps)) == []


if __name__ == "__main__":
  if sys.argv[1:2] != ["loop"]:
    raise SystemExit(f"usage: {sys.argv[0]} loop WORKDIR N_STEPS SLEEP SIGTERM")
  _run_loop(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), bool(int(sys.argv[5])))
