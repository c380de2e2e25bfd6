"""What several test files share: paths to ../shared, the reference fixtures, the experiment of a config,
a cheap stand-in for the FID Inception, and the kill-at-any-moment harness of the resume tests."""

from __future__ import annotations

import functools
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("SCORE_JAX_SHARED", ROOT.parent / "shared"))
CORE_FIXTURES = SHARED / "fixtures" / "score_sde_pytorch" / "core"


def load_core_fixture(name: str):
  """The original PyTorch core fixture ``name`` (vesde/vpsde/subvpsde), or skip with the reason."""
  path = CORE_FIXTURES / f"{name}.npz"
  if not path.exists():
    pytest.skip(f"reference fixture {path} not found (../shared is absent); set SCORE_JAX_SHARED to its path")
  return dict(np.load(path))


@functools.lru_cache(maxsize=None)
def experiment(config_path: str):
  """``pipeline.setup`` of a config file under the repository root (shapes only), built once per test session."""
  from score_jax import configs_loader, pipeline

  return pipeline.setup(configs_loader.load_config(ROOT / config_path))


CONFIG = ROOT / "configs" / "ve" / "cifar10_ncsnpp_continuous.py"

# --config.x=y overrides that make configs/ve/cifar10_ncsnpp_continuous.py tiny (also used by the subprocess tests).
TINY = {
    "data.dataset": "npz", "data.image_size": 8, "model.nf": 8, "model.ch_mult": (1, 2), "model.num_res_blocks": 1,
    "model.attn_resolutions": (4,), "model.fir": False, "model.progressive_input": "none",
    "model.progressive": "none", "model.dropout": 0.0, "model.num_scales": 5, "model.fourier_scale": 16,
    "training.batch_size": 4, "training.n_jitted_steps": 1, "training.n_iters": 4, "training.log_freq": 2,
    "training.eval_freq": 2, "training.snapshot_freq": 4, "training.snapshot_freq_for_preemption": 2,
    "training.snapshot_num_samples": 4, "eval.batch_size": 4, "eval.bpd_num_examples": 4,
    "eval.bpd_num_repeats": 1, "eval.enable_bpd": True, "sampling.ode_rtol": 1e-3, "sampling.ode_atol": 1e-3,
    "optim.warmup": 0,
}


def tiny_config(data: pathlib.Path, **overrides):
  from score_jax import configs_loader

  config = configs_loader.load_config(CONFIG)
  for name, value in {**TINY, "data.root": str(data), **overrides}.items():
    section, field = name.split(".")
    config[section][field] = value
  return config


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


def fake_feature_fn(images):
  """pool3 [N, 6] and logits [N, 4]: fixed projections of the per-image channel means and stds."""
  images = np.asarray(images, np.float64)
  assert images.min() >= 0.0 and images.max() <= 1.0
  summary = np.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=1)  # [N, 6]
  rng = np.random.default_rng(123)
  pool3 = summary @ rng.normal(size=(6, 6))
  logits = 5.0 * summary @ rng.normal(size=(6, 4))
  return dict(pool3=pool3, logits=logits)


def _leaf_paths(tree) -> dict[str, Any]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): leaf for path, leaf in flat}


# A training process under run_with_kills prints one line like this, flushed, after each step.
PROGRESS_RE = re.compile(r"^step (\d+)$")


def _read_into(stream, chunks: list) -> None:
  chunks.append(stream.read())


def run_with_kills(argv: Sequence[str], kill_points: Sequence[tuple[int, float]], *, env: Mapping | None = None,
                   timeout: float = 120.0, cwd=None) -> list[dict]:
  """Run ``argv`` once per kill point, SIGKILLing it there, then once more to completion.

  The process must resume from its own checkpoints and print ``step N`` (see :data:`PROGRESS_RE`) after
  each step. Kill point ``(n, delay)``: kill ``delay`` seconds after the first progress line with
  ``N >= n`` (the kill may land in a step or in a save). A run that ends before its kill point is recorded
  with its exit code and ``killed=False``; a run that exits non-zero without being killed raises.

  Returns:
    one record per run: ``{'kill_point', 'first_step', 'last_step', 'killed', 'returncode', 'stderr_tail'}``,
    where ``first_step``/``last_step`` are the first and last progress lines read (``None``: none; a
    killed run may have gone a little past ``last_step``).
  """
  records = []
  for point in [*kill_points, None]:
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            env=None if env is None else dict(env), cwd=cwd)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    stderr_chunks: list[str] = []  # read on a thread so that a chatty stderr cannot fill its pipe and block
    reader = threading.Thread(target=_read_into, args=(proc.stderr, stderr_chunks), daemon=True)
    reader.start()
    first = last = None
    killed = False
    try:
      for line in proc.stdout:
        m = PROGRESS_RE.match(line.strip())
        if not m:
          continue
        last = int(m.group(1))
        first = last if first is None else first
        if point is not None and last >= point[0]:
          time.sleep(point[1])
          killed = proc.poll() is None  # it may have finished meanwhile
          if killed:
            proc.send_signal(signal.SIGKILL)
          break
      proc.stdout.close()
      returncode = proc.wait()
    finally:
      watchdog.cancel()
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    reader.join(timeout=10)
    if not killed and returncode != 0:
      raise RuntimeError(f"{argv} exited with {returncode} (kill point {point}):\n{''.join(stderr_chunks)[-3000:]}")
    records.append(dict(kill_point=point, first_step=first, last_step=last, killed=killed, returncode=returncode,
                        stderr_tail="".join(stderr_chunks)[-2000:]))
  return records


def tree_differences(a, b) -> list[str]:
  """Leaf paths where two pytrees differ in structure, shape, dtype or any bit (NaNs compare by bits)."""
  fa, fb = _leaf_paths(a), _leaf_paths(b)
  out = [f"{k}: only in the first" for k in fa if k not in fb] + [f"{k}: only in the second" for k in fb if k not in fa]
  for k in fa:
    if k in fb:
      x, y = np.asarray(fa[k]), np.asarray(fb[k])
      if x.shape != y.shape or x.dtype != y.dtype:
        out.append(f"{k}: {x.dtype}{list(x.shape)} vs {y.dtype}{list(y.shape)}")
      elif x.tobytes() != y.tobytes():
        out.append(f"{k}: values differ")
  return out
