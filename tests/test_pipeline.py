"""The image pipeline behind the launcher: train / eval / sample on tiny data, resume after SIGKILL, bad input.

The network is a tiny NCSN++ (8x8 images, nf 8) so that every compile stays short; the full-size configs
are covered by the dry validation at the end (shapes only).
"""

import hashlib
import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import (
  CONFIG,
  ROOT,
  SHARED,
  env,
  experiment,
  fake_feature_fn,
  launcher_argv,
  override_flags,
  run_with_kills,
  tiny_config,
  tiny_data,
  tree_differences,
)

from score_jax import configs_loader, features, pipeline

_tiny_data, _override_flags, _env = tiny_data, override_flags, env  # the launcher-test helpers of tests/helpers.py


def _launcher(data, workdir, *flags, overrides=None, env=None, timeout=300):
  argv = launcher_argv(data, workdir, *flags, overrides=overrides)
  return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _digest(directory: pathlib.Path) -> dict[str, str]:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A 4-step run of the tiny NCSN++ (in process): its workdir, data and config."""
  root = tmp_path_factory.mktemp("run_lib")
  data = _tiny_data(root / "data.npz")
  config = tiny_config(data)
  workdir = root / "run"
  result = pipeline.train_and_evaluate(config, workdir, progress=False)
  return dict(workdir=workdir, data=data, config=config, result=result)


def test_train_writes_checkpoints_logs_grids(trained):
  workdir, result = trained["workdir"], trained["result"]
  assert result["step"] == 4 and not result["stopped_early"] and np.isfinite(result["loss"])
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [4]  # preemption ckpt 2 replaced
  log = [json.loads(line) for line in (workdir / "train_log.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log if "loss" in r] == [2, 4]
  assert [r["step"] for r in log if "eval_loss" in r] == [2, 4]
  assert all(np.isfinite(r.get("loss", r.get("eval_loss"))) for r in log)
  snapshot = workdir / "snapshots" / "step_4"
  with np.load(snapshot / "samples.npz") as f:
    assert f["images"].shape == (4, 8, 8, 3) and f["images"].dtype == np.uint8
  assert (snapshot / "grid.png").stat().st_size > 0
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_checkpoint_restores_with_orbax_alone(trained):
  import orbax.checkpoint as ocp

  mngr = ocp.CheckpointManager(trained["workdir"] / "checkpoints")
  restored = mngr.restore(mngr.latest_step())
  state = restored["state"]
  assert int(state["step"]) == 4
  assert {"params", "ema_params", "opt_state", "step"} <= set(state)
  assert jax.tree_util.tree_structure(state["params"]) == jax.tree_util.tree_structure(state["ema_params"])


def test_eval_reports_loss_and_bpd_with_standard_errors(trained):
  result = pipeline.evaluate(trained["config"], trained["workdir"], progress=False)
  assert result["checkpoint"] == "step_4" and result["loss_examples"] == 4
  assert np.isfinite(result["loss"]) and result["loss_se"] > 0
  assert result["bpd_examples"] == 4 and result["bpd_repeats"] == 1
  # an untrained model: worse than uniform 8-bit noise is possible, but not absurd
  assert 1.0 < result["bpd"] < 100.0 and 0 < result["bpd_se"] < 5.0
  saved = json.loads((trained["workdir"] / "eval" / "step_4.json").read_text())
  assert saved["bpd"] == pytest.approx(result["bpd"])


def test_sample_chunks_resume_and_do_not_depend_on_chunk_size(trained, tmp_path):
  workdir = trained["workdir"]
  # predictor only: every draw comes from the sample's own key, so chunking cannot matter
  config = tiny_config(trained["data"], **{"sampling.corrector": "none", "eval.batch_size": 4})
  first = pipeline.sample(config, workdir, num_samples=6, progress=False)
  assert first["chunks_written"] == 2 and first["nfe_per_sample"] == 5
  again = pipeline.sample(config, workdir, num_samples=6, progress=False)
  assert again["chunks_written"] == 0 and again["chunks_reused"] == 2
  out = pathlib.Path(first["directory"])
  assert (out / "grid.png").stat().st_size > 0
  by_4 = pipeline.load_samples(out)
  assert by_4.shape == (6, 8, 8, 3)
  other = tmp_path / "other"
  shutil.copytree(workdir / "checkpoints", other / "checkpoints")
  config3 = tiny_config(trained["data"], **{"sampling.corrector": "none", "eval.batch_size": 3})
  by_3 = pipeline.load_samples(pipeline.sample(config3, other, num_samples=6, progress=False)["directory"])
  assert np.abs(by_4.astype(int) - by_3.astype(int)).max() <= 1  # float rounding may move a pixel by one level
  # another chunk size in the same folder would mix settings: refused, nothing touched
  before = _digest(out)
  with pytest.raises(ValueError, match="chunk"):
    pipeline.sample(config3, workdir, num_samples=6, progress=False)
  assert _digest(out) == before


def test_sampling_killed_midway_restarts_to_the_same_set(trained, tmp_path):
  """A sample job that died mid-way (one chunk missing, one truncated) completes to exactly the same samples."""
  workdir = tmp_path / "s"
  shutil.copytree(trained["workdir"] / "checkpoints", workdir / "checkpoints")
  # the sampler of test_sample_chunks_... (chunks of 4, predictor only): compiled once per session
  config = tiny_config(trained["data"], **{"eval.batch_size": 4, "sampling.corrector": "none"})
  out = pathlib.Path(pipeline.sample(config, workdir, num_samples=10, progress=False)["directory"])
  complete = pipeline.load_samples(out)
  (out / "samples_0000004.npz").unlink()  # never written
  data = (out / "samples_0000008.npz").read_bytes()
  (out / "samples_0000008.npz").write_bytes(data[:len(data) // 2])  # cut off mid-write (not atomic elsewhere)
  again = pipeline.sample(config, workdir, num_samples=10, progress=False)
  assert again["chunks_reused"] == 1 and again["chunks_written"] == 2
  np.testing.assert_array_equal(pipeline.load_samples(out), complete)


def test_nan_loss_stops_naming_step_and_checkpoint(trained, tmp_path):
  workdir = tmp_path / "nan"
  shutil.copytree(trained["workdir"] / "checkpoints", workdir / "checkpoints")
  config = tiny_config(trained["data"],
                       **{"training.n_iters": 6, "optim.lr": 1e30, "training.snapshot_sampling": False})
  # optim.lr is not in the checkpoint's fingerprint (model, data), so the run resumes at step 4
  with pytest.raises(FloatingPointError, match=r"at step [56].*Last good checkpoint: .*checkpoints/4 \(step 4\)"):
    pipeline.train_and_evaluate(config, workdir, progress=False)
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4"]


def test_foreign_checkpoint_is_refused_before_training(trained, tmp_path):
  workdir = tmp_path / "foreign"
  shutil.copytree(trained["workdir"] / "checkpoints", workdir / "checkpoints")
  before = _digest(workdir)
  config = tiny_config(trained["data"], **{"model.nf": 16, "training.n_iters": 8})
  with pytest.raises(ValueError, match="belongs to another config"):
    pipeline.train_and_evaluate(config, workdir, progress=False)
  assert _digest(workdir) == before


def test_missing_data_and_bad_fields_fail_before_work(tmp_path):
  with pytest.raises(FileNotFoundError, match="no_such.npz"):
    pipeline.train_and_evaluate(tiny_config(tmp_path / "no_such.npz"), tmp_path / "run", progress=False)
  assert not (tmp_path / "run").exists()
  data = _tiny_data(tmp_path / "data.npz")
  with pytest.raises(ValueError, match="snapshot_freq=3 is not a multiple of training.n_jitted_steps=2"):
    pipeline.setup(tiny_config(data, **{"training.n_jitted_steps": 2, "training.snapshot_freq": 3}))
  with pytest.raises(ValueError, match="sampling.method='euler'"):
    pipeline.setup(tiny_config(data, **{"sampling.method": "euler"}))
  with pytest.raises(FileNotFoundError, match="no checkpoints in .*train first"):
    pipeline.sample(tiny_config(data), tmp_path / "empty", num_samples=2, progress=False)


def test_launcher_errors_are_clear_and_write_nothing(tmp_path):
  data = _tiny_data(tmp_path / "data.npz")
  env = _env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = _launcher(data, tmp_path / "run", overrides={"training.batch_size": 3}, env=env)
  assert result.returncode == 1, result.stderr[-2000:]
  assert "score_jax: error: training.batch_size 3 is not divisible by the number of devices 2" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def test_launcher_dry_run_builds_and_stops(tmp_path):
  data = _tiny_data(tmp_path / "data.npz")
  result = _launcher(data, tmp_path / "run", "--dry_run", env=_env(tmp_path))
  assert result.returncode == 0, result.stderr[-2000:]
  summary = json.loads(result.stdout[result.stdout.index("{"):])
  assert summary["train_examples"] == 24 and summary["resume_step"] is None and summary["n_params"] > 0
  assert not (tmp_path / "run").exists()


@pytest.mark.slow  # ~30 s of subprocesses; the default suite keeps the toy loop's kill test (test_checkpoints.py)
def test_sigkill_at_any_moment_resumes_bit_identically(tmp_path):
  """The real launcher, killed with SIGKILL at several points (in a step, in a save), ends where an
  uninterrupted run ends: parameters, EMA and optimizer state bit-identical."""
  data = _tiny_data(tmp_path / "data.npz")
  overrides = {"training.n_iters": 6, "training.snapshot_freq": 6, "training.snapshot_freq_for_preemption": 2,
               "training.eval_freq": 0, "training.snapshot_sampling": False}
  argv_tail = ["--progress=false", "--step_lines", *_override_flags(data, **overrides)]
  base = [sys.executable, "-m", "score_jax.main", f"--config={CONFIG}"]
  env = _env(tmp_path)
  straight = tmp_path / "straight"
  config = tiny_config(data, **overrides)
  pipeline.train_and_evaluate(config, straight, progress=False)  # in process: the same compiled step (cache)
  killed = tmp_path / "killed"
  records = run_with_kills([*base, f"--workdir={killed}", *argv_tail],
                                       [(1, 0.05), (3, 0.3)], env=env, timeout=300, cwd=ROOT)
  assert sum(r["killed"] for r in records) >= 1, records
  assert records[-1]["returncode"] == 0
  exp = pipeline.setup(config)
  with pipeline.experiment.checkpointer(exp, killed) as a, pipeline.experiment.checkpointer(exp, straight) as b:
    assert a.latest_step() == b.latest_step() == 6
    assert tree_differences(a.restore(6), b.restore(6)) == []


# ---- every config of configs/ builds (dry validation) -------------------------------------------------------

EXPERIMENTS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.py")
                     if p.name != "__init__.py" and not {"toy", "classifier", "edm", "cpu"} & set(p.parts)
                     and not p.name.startswith("default_"))
# classifiers: test_classifier.py; edm: test_edm_configs.py; cpu: test_cpu_config.py


def test_the_experiment_configs_are_all_found():
  assert len(EXPERIMENTS) == 39  # every config of the original (classifiers and the toy have their own tests)


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_every_experiment_config_passes_dry_validation(path):
  """Each config: fields checked, network / SDE / objective / optimizer / sampler built, state shapes
  (``trace_step=False``: the step's trace is covered for representative configs below and, for all of
  them, by the slow test)."""
  summary = pipeline.dry_run(configs_loader.load_config(ROOT / path), check_data=False, trace_step=False,
                             exp=experiment(path))
  assert summary["n_params"] > 1_000_000


@pytest.mark.parametrize("path", ["configs/ve/ncsnv2/cifar10.py"])  # the cheapest trace; all of them: slow test below
def test_dry_run_traces_the_train_step(path):
  summary = pipeline.dry_run(configs_loader.load_config(ROOT / path), check_data=False)
  assert summary["n_devices"] == 1 and summary["parallel"] == "jit"


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS)
def test_dry_run_traces_every_config(path):
  summary = pipeline.dry_run(configs_loader.load_config(ROOT / path), check_data=False)
  assert summary["n_params"] > 1_000_000 and summary["train_examples"] is None


@pytest.mark.parametrize("path", ["configs/default_cifar10_configs.py", "configs/default_lsun_configs.py"])
def test_default_configs_stop_at_the_missing_model(path):
  with pytest.raises(ValueError, match="model.name is not set"):
    pipeline.dry_run(configs_loader.load_config(ROOT / path), check_data=False, trace_step=False)


# ---- a short real run on CIFAR-10 (slow) ---------------------------------------------------------------------

CIFAR = SHARED / "data" / "cifar10-jpeg.tar.gz"


@pytest.mark.slow
def test_small_ncsnpp_on_cifar10_learns(tmp_path):
  """300 steps of a small NCSN++ on CIFAR-10 (CPU): the loss falls; sample writes a grid; eval gives bits/dim."""
  if not CIFAR.exists():
    pytest.skip(f"{CIFAR} not found (../shared is absent); set SCORE_JAX_SHARED")
  overrides = {"data.dataset": "folder", "data.root": str(CIFAR), "data.image_size": 32, "model.nf": 16,
               "model.attn_resolutions": (16,), "model.num_scales": 100, "training.batch_size": 16,
               "training.n_iters": 300, "training.log_freq": 25, "training.eval_freq": 0,
               "training.snapshot_freq": 300, "training.snapshot_freq_for_preemption": 100,
               "training.snapshot_sampling": False, "optim.lr": 1e-3, "model.ema_rate": 0.99, "eval.batch_size": 16,
               "eval.bpd_num_examples": 16, "eval.bpd_num_repeats": 1}
  config = tiny_config(CIFAR, **overrides)
  result = pipeline.train_and_evaluate(config, tmp_path, progress=False)
  losses = [json.loads(line)["loss"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
  assert result["step"] == 300 and np.mean(losses[-3:]) < 0.5 * np.mean(losses[:2]), losses
  out = pipeline.sample(config, tmp_path, num_samples=16, progress=False)
  assert (pathlib.Path(out["directory"]) / "grid.png").exists()
  ev = pipeline.evaluate(config, tmp_path, progress=False)
  assert np.isfinite(ev["bpd"]) and ev["bpd_se"] > 0


# ---- --mode eval with sampling: FID / IS / KID (stand-in feature network) ---------------------------------


class _CountingFeatures:
  """The stand-in feature network of test_eval_pipeline, counting the images it is given (padding included)."""

  tag = "fake_features"

  def __init__(self):

    self.fn, self.images = fake_feature_fn, 0

  def __call__(self, images):
    self.images += len(images)
    return self.fn(images)


def _fid_stats(trained, tmp_path):
  from score_jax import eval as sj_eval

  stats = tmp_path / "stats.npz"
  data_config = features.data_config("npz", root=str(trained["data"]), image_size=8)
  sj_eval.compute_stats(data_config, "train", fake_feature_fn, str(stats), batch_size=8, save_features=True,
                        progress=False)
  return stats


def test_eval_with_sampling_reports_fid_is_kid(trained, tmp_path, monkeypatch):
  """FID / IS / KID from features extracted chunk by chunk as the samples are drawn: equal to a second pass
  over the finished sample set, and after a kill mid-way only the missing chunks are redone."""
  from score_jax import eval as sj_eval

  stats = _fid_stats(trained, tmp_path)
  workdir = tmp_path / "run"
  shutil.copytree(trained["workdir"] / "checkpoints", workdir / "checkpoints")
  overrides = {"eval.enable_sampling": True, "eval.enable_loss": False, "eval.enable_bpd": False,
               "eval.num_samples": 6, "sampling.corrector": "none"}
  # without weights: a clear error before any sample is drawn
  monkeypatch.delenv("SCORE_JAX_INCEPTION_WEIGHTS", raising=False)
  with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05"):
    pipeline.evaluate(tiny_config(trained["data"], **overrides), workdir, progress=False)
  assert not (workdir / "samples").exists()
  config = tiny_config(trained["data"], **overrides, **{"eval.fid_stats": str(stats)})
  features = _CountingFeatures()
  features.feature_dim = 2048  # as the FID Inception states it: the 6-d statistics are refused before sampling
  with pytest.raises(ValueError, match="6-dimensional, but the feature network gives 2048"):
    pipeline.evaluate(config, workdir, progress=False, feature_fn=features)
  assert not (workdir / "samples").exists() and features.images == 0
  features.feature_dim = 6
  result = pipeline.evaluate(config, workdir, progress=False, feature_fn=features)
  assert features.images == 8  # two chunks of 4 (the last one padded), each seen once, while sampling
  assert result["num_samples"] == 6 and np.isfinite(result["fid"]) and result["fid"] > 0
  assert np.isfinite(result["inception_score"]) and np.isfinite(result["kid"])
  assert json.loads((workdir / "eval" / "step_4.json").read_text())["fid"] == pytest.approx(result["fid"])
  samples = pathlib.Path(result["samples"])
  with np.load(stats) as f:
    reference = f["pool_3"]
  second_pass = sj_eval.sample_metrics(samples, features.fn, stats=str(stats), reference_features=reference,
                                       progress=False, store_features=False)  # every image fed again
  for name in ("fid", "inception_score", "kid"):  # features are stored as float32
    assert result[name] == pytest.approx(second_pass[name], rel=1e-5, abs=1e-9), name
  # killed between a chunk and its features, and before the last chunk: only those are redone
  features_dir = samples / "features_fake_features"
  (features_dir / "features_0000000.npz").unlink()
  (samples / "samples_0000004.npz").unlink()
  (features_dir / "features_0000004.npz").unlink()
  shutil.rmtree(workdir / "eval")  # a kill mid-way leaves no record (written last); one would be reused as it is
  features.images = 0
  again = pipeline.evaluate(config, workdir, progress=False, feature_fn=features)
  assert features.images == 8
  for name in ("fid", "inception_score", "kid"):
    assert again[name] == pytest.approx(result[name], rel=1e-6), name
  features.images = 0
  assert pipeline.evaluate(config, workdir, progress=False, feature_fn=features)["fid"] == pytest.approx(result["fid"])
  assert features.images == 0  # nothing left to compute
  # `python -m score_jax.eval metrics` on the same samples and network reads the features --mode eval stored
  reread = sj_eval.sample_metrics(samples, features, stats=str(stats), reference_features=reference, progress=False)
  assert features.images == 0 and reread["feature_chunks_computed"] == 0
  for name in ("fid", "inception_score", "kid"):
    assert reread[name] == pytest.approx(result[name], rel=1e-12), name


def test_eval_of_every_checkpoint(trained, tmp_path, caplog):
  """--checkpoint=all: every checkpoint into its own JSON and TensorBoard step; done ones are kept, a corrupt
  one is skipped with a warning."""
  workdir = tmp_path / "run"
  shutil.copytree(trained["workdir"] / "checkpoints", workdir / "checkpoints")
  shutil.copytree(workdir / "checkpoints" / "4", workdir / "checkpoints" / "8")  # holds step 4: not step 8's
  stats = _fid_stats(trained, tmp_path)
  overrides = {"eval.enable_sampling": True, "eval.enable_loss": True, "eval.enable_bpd": False,
               "eval.num_samples": 4, "sampling.corrector": "none", "eval.fid_stats": str(stats)}
  config = tiny_config(trained["data"], **overrides)
  features = _CountingFeatures()
  with caplog.at_level("WARNING"):
    everything = pipeline.evaluate(config, workdir, checkpoint="all", progress=False, feature_fn=features)
  assert everything["checkpoints"] == ["step_4"] and everything["skipped_corrupt"] == [8]
  assert any("skipping corrupt checkpoint" in r.message for r in caplog.records)
  single = json.loads((workdir / "eval" / "step_4.json").read_text())
  assert single["fid"] == pytest.approx(everything["results"][0]["fid"]) and np.isfinite(single["loss"])
  features.images = 0
  again = pipeline.evaluate(config, workdir, checkpoint="all", progress=False, feature_fn=features)
  assert again["reused"] == 1 and again["evaluated"] == 0 and features.images == 0
  # other statistics written at the same path: evaluated anew (the samples and their features are reused)
  with np.load(stats) as f:
    content = {name: f[name] for name in f.files}
  stats.unlink()
  np.savez(stats, **{**content, "mu": content["mu"] + 1.0})
  moved = pipeline.evaluate(config, workdir, checkpoint="all", progress=False, feature_fn=features)
  assert moved["evaluated"] == 1 and features.images == 0
  assert moved["results"][0]["fid"] != pytest.approx(single["fid"], rel=1e-3)  # against the new statistics
  # another feature network (another tag): evaluated anew, with its own features
  other = _CountingFeatures()
  other.tag = "other_features"
  assert pipeline.evaluate(config, workdir, checkpoint="all", progress=False, feature_fn=other)["evaluated"] == 1
  assert other.images > 0
  # other settings: evaluated anew
  changed = tiny_config(trained["data"], **{**overrides, "eval.enable_loss": False})
  assert pipeline.evaluate(changed, workdir, checkpoint="all", progress=False, feature_fn=features)["evaluated"] == 1
  with pytest.raises(ValueError, match="applies to --mode eval"):
    pipeline.sample(config, workdir, checkpoint="all", num_samples=2, progress=False)


@pytest.mark.slow  # 10 s; the ablation command is tested on the 2-D default in tests/test_toy_launcher.py
def test_ablate_on_an_image_model(trained, tmp_path):
  """The ablation command on the tiny NCSN++: two fast samplers, FID / IS / KID from a stand-in feature
  network, the table and the plots."""
  from score_jax import ablate
  from score_jax import eval as sj_eval

  stats = tmp_path / "stats.npz"
  data_config = features.data_config("npz", root=str(trained["data"]), image_size=8)
  sj_eval.compute_stats(data_config, "train", fake_feature_fn, str(stats), batch_size=8, save_features=True,
                        progress=False)
  config = tiny_config(trained["data"], **{"eval.fid_stats": str(stats)})
  out = tmp_path / "ablation"
  result = ablate.run_ablation(config, trained["workdir"], out, ["sampling.method=ddim,heun", "sampling.N=2"],
                               num_samples=6, batch_size=4, progress=False, feature_fn=fake_feature_fn)
  assert result["cells_computed"] == 2 and result["checkpoint"] == "step_4"
  rows = result["rows"]
  assert [r["nfe"] for r in rows] == [3, 5]  # N steps (Heun: two evaluations each) + the final denoising
  assert all(np.isfinite(r["fid"]) and np.isfinite(r["inception_score"]) and np.isfinite(r["kid"]) for r in rows)
  for name in ("results.csv", "results.md", "quality_vs_nfe.png", "sweep_method.png", "samples.png"):
    assert (out / name).stat().st_size > 0, name


def test_controllable_inpaint_from_files(trained, tmp_path):
  """python -m score_jax.controllable's work on the tiny NCSN++: images and a mask from files, known pixels
  kept, a result grid; a mask of the wrong size fails before sampling. (Colorization shares the path; its
  constraint is tested in tests/test_controllable.py.)"""
  from PIL import Image

  from score_jax import controllable

  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "images.npz", images=images)
  mask = np.zeros((8, 8), np.uint8)
  mask[:, :4] = 255  # left half known
  Image.fromarray(mask).save(tmp_path / "mask.png")
  config = tiny_config(trained["data"], **{"sampling.corrector": "none"})
  out = tmp_path / "out"
  result = controllable.run_task(config, "inpaint", trained["workdir"], out, images=str(tmp_path / "images.npz"),
                                 masks=str(tmp_path / "mask.png"), progress=False)
  assert result["num_images"] == 3 and result["nfe_per_image"] == 5
  with np.load(out / "inpaint.npz") as f:
    samples = f["samples"]
  assert samples.shape == (3, 8, 8, 3) and np.array_equal(samples[:, :, :4], images[:, :, :4])
  assert (out / "inpaint.png").stat().st_size > 0
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "small.png")
  with pytest.raises(ValueError, match=r"masks in .* have shape \(3, 4, 4\); expected"):
    controllable.run_task(config, "inpaint", trained["workdir"], tmp_path / "bad", images=str(tmp_path / "images.npz"),
                          masks=str(tmp_path / "small.png"), progress=False)
  assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_controllable_colorize_from_files(trained, tmp_path):
  from score_jax import controllable

  images = np.random.default_rng(2).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  np.savez(tmp_path / "images.npz", images=images)
  config = tiny_config(trained["data"], **{"sampling.corrector": "none"})
  result = controllable.run_task(config, "colorize", trained["workdir"], tmp_path / "out",
                                 images=str(tmp_path / "images.npz"), progress=False)
  assert result["num_images"] == 3 and (tmp_path / "out" / "colorize.png").stat().st_size > 0
  with np.load(tmp_path / "out" / "colorize.npz") as f:
    # (the gray value is kept exactly before the uint8 clip: tests/test_controllable.py; this untrained model's
    # colors leave [0, 255], so here only the files are checked)
    assert f["samples"].shape == (3, 8, 8, 3) and np.array_equal(f["inputs"], images)
