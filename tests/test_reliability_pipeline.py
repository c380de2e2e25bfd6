"""Items 2-4 of issue 16 on a tiny trained NCSN++: kept evaluations, verified checkpoints, finite samples.

Faults are made for real: bytes flipped in a saved checkpoint (same size), and a sampler setting that makes
every sample NaN (``sampling.snr=1e20``) run through the launcher in a subprocess.
"""

import importlib
import json
import logging
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config, tree_differences
from PIL import Image
from reliability_common import digest, launcher, tiny_data

from score_jax import checkpoints, pipeline
from score_jax.pipeline.evaluators import loss as loss_evaluator
from score_jax.pipeline.writer import MetricWriter

# the modules (pipeline.sample and pipeline.evaluate are the functions)
sample_lib = importlib.import_module("score_jax.pipeline.sample")
evaluate_lib = importlib.import_module("score_jax.pipeline.evaluate")

# no snapshot sampling (its sampler is compiled elsewhere); checkpoints 4 (snapshot) and 6 (preemption) kept
RUN = {"training.n_iters": 6, "training.snapshot_sampling": False, "eval.enable_bpd": False,
       "sampling.corrector": "none"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("reliability")
  data = tiny_data(root / "data.npz")
  workdir = root / "run"
  pipeline.train_and_evaluate(tiny_config(data, **RUN), workdir, progress=False)
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 6]
  return dict(workdir=workdir, data=data)


def _copy(trained, tmp_path) -> pathlib.Path:
  workdir = tmp_path / "run"
  shutil.copytree(trained["workdir"] / "checkpoints", workdir / "checkpoints")
  return workdir


def _without_lock(files: dict) -> dict:
  return {k: v for k, v in files.items() if k != ".lock"}  # the lock file a run creates (pipeline.workdir)


def _damage(message: str) -> bool:
  """Whether ``message`` reports damaged arrays: orbax's own checksums catch some flips ("unreadable arrays"),
  the digest recorded at save all the others, which read back without error (where the layout of the data files,
  which varies between saves, puts the flipped bytes decides which)."""
  return "differ from the sha256 recorded" in message or "unreadable arrays" in message


def flip_bytes(checkpoint: pathlib.Path) -> None:
  """Damage a checkpoint in place without changing any size: 8 bytes inverted at every tenth of each array data
  file (orbax's OCDBT data)."""
  files = list((checkpoint / "state" / "ocdbt.process_0" / "d").iterdir())
  assert files
  for path in files:
    data = bytearray(path.read_bytes())
    for tenth in range(1, 10):
      at = len(data) * tenth // 10
      data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    path.write_bytes(bytes(data))


# ---- item 3: checkpoint integrity ----------------------------------------------------------------------------


def test_flipped_bytes_are_caught_by_the_digest_of_the_restored_item(tmp_path):
  state = dict(params={"w": jnp.arange(4096.0)}, ema_params={"w": jnp.ones(4096)}, opt_state={"m": jnp.zeros(4)},
               step=jnp.int32(1))
  ckpts = checkpoints.Checkpointer(tmp_path, state, snapshot_freq=1, preemption_freq=None)
  ckpts.save(state, 1)
  assert set(ckpts.metadata(1)["digests"]) == {"params", "ema_params", "opt_state", "step"}
  # the biggest array file holds params (an arange: the constant arrays compress to little)
  path = max((tmp_path / "checkpoints" / "1" / "state").rglob("d/*"), key=lambda p: p.stat().st_size)
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(checkpoints.CheckpointCorruptError, match=r"checkpoints/1: the arrays of params differ from "
                     r"the sha256 recorded"):
    ckpts.restore(1)
  # a partial restore hashes only what it reads: the EMA weights are intact and come back
  assert tree_differences(ckpts.restore(1, items=("ema_params", "step"))["ema_params"], state["ema_params"]) == []
  ckpts.close()


def test_training_skips_a_damaged_checkpoint_and_the_nan_stop_names_the_verified_one(trained, tmp_path, caplog):
  workdir = _copy(trained, tmp_path)
  flip_bytes(workdir / "checkpoints" / "6")
  config = tiny_config(trained["data"], **{**RUN, "optim.lr": 1e30})  # resumes from 4, NaN at step 5
  with caplog.at_level(logging.WARNING), pytest.raises(
      FloatingPointError, match=r"at step [56].*Last good checkpoint: .*checkpoints/4 \(step 4\)"):
    pipeline.train_and_evaluate(config, workdir, progress=False)
  assert any("skipping corrupt checkpoint" in r.message and "checkpoints/6: " in r.message and _damage(r.message)
             for r in caplog.records)


def test_eval_and_sample_of_a_damaged_checkpoint_are_errors(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  flip_bytes(workdir / "checkpoints" / "6")
  before = digest(workdir)
  config = tiny_config(trained["data"], **RUN)
  for run in (lambda: pipeline.sample(config, workdir, num_samples=4, progress=False),
              lambda: pipeline.evaluate(config, workdir, progress=False),
              lambda: pipeline.sample(config, workdir, checkpoint="6", num_samples=4, progress=False)):
    with pytest.raises(checkpoints.CheckpointCorruptError, match=r"checkpoints/6: ") as e:
      run()
    assert _damage(str(e.value))
  assert _without_lock(digest(workdir)) == before


@pytest.mark.slow  # 20-30 s: the launcher in a subprocess (the in-process test above covers the same path)
def test_sample_from_a_damaged_checkpoint_is_an_error_and_changes_nothing(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  flip_bytes(workdir / "checkpoints" / "6")
  before = digest(workdir)
  out = launcher(trained["data"], workdir, "--mode=sample", "--num_samples=4", overrides=RUN, tmp_path=tmp_path)
  assert out.returncode != 0
  assert "checkpoints/6" in out.stderr and "The newest checkpoint is corrupt" in out.stderr, out.stderr[-2000:]
  assert _damage(out.stderr), out.stderr[-2000:]
  assert not (workdir / "samples").exists()
  assert _without_lock(digest(workdir)) == before


# ---- item 4: non-finite samples ------------------------------------------------------------------------------


def test_a_non_finite_chunk_is_not_written(trained, tmp_path, monkeypatch):
  """The chunk loop itself, without compiling a sampler: the second chunk comes out NaN."""
  workdir = _copy(trained, tmp_path)

  def make_sample_fn(exp, batch_size, count_progress=False):
    def fn(params, key, offset):
      value = np.nan if offset >= batch_size else 0.0
      return np.full((batch_size,) + exp.image_shape, value, np.float32), 1
    return fn

  monkeypatch.setattr(sample_lib.experiment, "make_sample_fn", make_sample_fn)
  config = tiny_config(trained["data"], **RUN)
  with pytest.raises(FloatingPointError, match="4 of the 4 samples of the chunk starting at sample 4 are not finite"):
    pipeline.sample(config, workdir, num_samples=12, progress=False)
  assert sorted(p.name for p in workdir.glob("samples/*/samples_*.npz")) == ["samples_0000000.npz"]


def test_non_finite_snapshot_samples_are_reported_not_silent(trained, tmp_path, caplog):
  """A periodic snapshot (training goes on) whose samples are partly NaN: a warning naming the step and the
  sampler settings, and ``snapshot_nonfinite`` in train_log.jsonl; the grid is still written."""
  exp = pipeline.setup(tiny_config(trained["data"], **RUN))
  training_lib = importlib.import_module("score_jax.pipeline.training")

  def sample_fn(params, key, offset):
    x = np.zeros((4,) + exp.image_shape, np.float32)
    x[1:3] = np.nan
    return x, 1

  with MetricWriter(tmp_path) as writer, caplog.at_level(logging.WARNING, logger="score_jax"):
    training_lib._write_snapshot(exp, sample_fn, None, tmp_path, 7, writer)
  assert "step 7: 2 of the 4 snapshot samples are not finite" in caplog.text and "method=pc" in caplog.text
  records = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
  assert records == [dict(step=7, time=records[0]["time"], snapshot_nonfinite=2.0)]
  assert (tmp_path / "snapshots" / "step_7" / "grid.png").exists()


@pytest.mark.slow  # 30-45 s: the launcher in a subprocess compiles the PC sampler with its corrector
def test_nan_samples_stop_naming_chunk_and_settings(trained, tmp_path):
  workdir = _copy(trained, tmp_path)
  before = digest(workdir)
  overrides = {**RUN, "sampling.corrector": "langevin", "sampling.snr": 1e20}  # 1e6 is enough on CIFAR-10
  out = launcher(trained["data"], workdir, "--mode=sample", "--num_samples=4", "--checkpoint=4",
                 overrides=overrides, tmp_path=tmp_path)
  assert out.returncode != 0
  assert "samples of the chunk starting at sample 0 are not finite" in out.stderr, out.stderr[-2000:]
  assert "snr=1e+20" in out.stderr and "corrector=langevin" in out.stderr
  assert not list(workdir.glob("samples/*/samples_*.npz"))  # nothing written for that chunk
  after = digest(workdir)
  assert {k: after[k] for k in before} == before  # (beside its meta.json, written before the first chunk)


def test_check_finite_passes_finite_samples():
  config = tiny_config(pathlib.Path("unused.npz"))
  sample_lib.check_finite(np.zeros((2, 8, 8, 3), np.float32), 0, config)
  with pytest.raises(FloatingPointError, match="1 of the 2 samples of the chunk starting at sample 8"):
    sample_lib.check_finite(np.array([np.zeros((8, 8, 3)), np.full((8, 8, 3), np.inf)]), 8, config)


# ---- item 2: evaluations never overwrite each other ------------------------------------------------------------


def test_evaluations_with_other_settings_are_kept_and_the_same_settings_reused(trained, tmp_path, monkeypatch):
  workdir = _copy(trained, tmp_path)
  first = tiny_config(trained["data"], **{**RUN, "eval.bpd_num_examples": 4})
  second = tiny_config(trained["data"], **{**RUN, "eval.bpd_num_examples": 8})
  a = pipeline.evaluate(first, workdir, progress=False)
  record_a = evaluate_lib.record_path(workdir, "step_6", a["settings"])
  saved_a = record_a.read_bytes()
  b = pipeline.evaluate(second, workdir, progress=False)
  record_b = evaluate_lib.record_path(workdir, "step_6", b["settings"])
  assert record_a != record_b and record_a.read_bytes() == saved_a  # the first result is kept
  assert json.loads((workdir / "eval" / "step_6.json").read_text()) == json.loads(record_b.read_text())  # newest
  assert a["loss_examples"] == 4 and b["loss_examples"] == 8

  def no_work(*args, **kwargs):
    raise AssertionError("evaluated again")

  monkeypatch.setattr(loss_evaluator, "run", no_work)
  again = pipeline.evaluate(first, workdir, progress=False)  # the same settings: the stored result
  assert again == json.loads(saved_a) and record_a.read_bytes() == saved_a


# ---- item 8: the log after a kill ----------------------------------------------------------------------------


def test_writer_drops_records_after_the_resumed_step(tmp_path):
  log_path = tmp_path / "train_log.jsonl"
  log_path.write_text("".join(json.dumps(dict(step=s, loss=1.0)) + "\n" for s in (2, 4, 6)) + '{"step": 8, "lo')
  with MetricWriter(tmp_path, resume_step=4) as writer:
    writer.scalars(6, dict(loss=0.5))
  assert [json.loads(line)["step"] for line in log_path.read_text().splitlines()] == [2, 4, 6]
  assert json.loads(log_path.read_text().splitlines()[-1])["loss"] == 0.5


def test_a_finished_run_says_so(trained, tmp_path, capsys):
  workdir = _copy(trained, tmp_path)
  result = pipeline.train_and_evaluate(tiny_config(trained["data"], **RUN), workdir, progress=False)
  assert result["finished"] and result["step"] == 6
  assert "is already trained to step 6 (training.n_iters=6): nothing to do" in capsys.readouterr().out


@pytest.mark.slow  # 40 s: a real resume that trains
def test_resume_drops_the_log_lines_after_the_restored_step(trained, tmp_path, capsys):
  """A run killed after logging step 6 but before its checkpoint committed (checkpoint 6 gone, a torn last line):
  the resumed run logs every step once."""
  workdir = _copy(trained, tmp_path)
  shutil.copy(trained["workdir"] / "train_log.jsonl", workdir / "train_log.jsonl")
  shutil.rmtree(workdir / "checkpoints" / "6")
  with open(workdir / "train_log.jsonl", "a") as f:
    f.write('{"step": 8, "loss": 0.')  # cut off mid-write
  config = tiny_config(trained["data"], **RUN)
  pipeline.train_and_evaluate(config, workdir, progress=False)
  records = [json.loads(line) for line in (workdir / "train_log.jsonl").read_text().splitlines()]
  loss_steps = [r["step"] for r in records if "loss" in r]
  assert loss_steps == [2, 4, 6]
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4, 6]
  # and a finished run says so instead of a summary with "loss": null
  again = pipeline.train_and_evaluate(config, workdir, progress=False)
  assert again["finished"] and "is already trained to step 6" in capsys.readouterr().out


# ---- item 6: signs of life, quiet libraries ------------------------------------------------------------------


def test_first_chunk_says_it_compiles_and_orbax_info_is_quiet(trained, tmp_path, caplog):
  from score_jax import logs

  workdir = _copy(trained, tmp_path)
  config = tiny_config(trained["data"], **RUN)
  levels = {name: logging.getLogger(name).level for name in ("", *logs.QUIET_LOGGERS)}
  try:
    logs.configure(verbose=False)
    with caplog.at_level(logging.INFO, logger="score_jax"):
      pipeline.sample(config, workdir, num_samples=8, progress=False)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m == "compiling the pc sampler (chunks of 4) ..." for m in messages), messages
    assert sum(m.startswith("compiled the pc sampler (chunks of 4) and ran it once in ") for m in messages) == 1
    assert not [r for r in caplog.records if r.name == "absl" and r.levelno < logging.WARNING]  # orbax's restore
    grid = np.asarray(Image.open(workdir / "samples" / "step_6_pc" / "grid.png"))
    big = np.asarray(Image.open(workdir / "samples" / "step_6_pc" / "grid_x4.png"))  # for viewing
    np.testing.assert_array_equal(big, np.repeat(np.repeat(grid, 4, axis=0), 4, axis=1))
    logs.configure(verbose=True)
    assert logging.getLogger("absl").isEnabledFor(logging.INFO)
  finally:
    for name, level in levels.items():
      logging.getLogger(name).setLevel(level)
