"""Item 7 of issue 16: the persistent compilation cache of the command lines (score_jax.compile_cache)."""

import json
import os
import subprocess
import sys

from helpers import ROOT

from score_jax import compile_cache

_CODE = """
import json, sys, time
from score_jax import compile_cache
where = compile_cache.enable(min_compile_secs=0.0)
import jax, jax.numpy as jnp
t0 = time.perf_counter()
jax.jit(lambda x: jnp.sin(x) @ x.T + 1.0).lower(jnp.ones((64, 64))).compile()
print(json.dumps(dict(where=None if where is None else str(where), seconds=time.perf_counter() - t0)))
"""


def _run(tmp_path, **env):
  base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  out = subprocess.run([sys.executable, "-c", _CODE], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**base, "JAX_PLATFORMS": "cpu", "XDG_CACHE_HOME": str(tmp_path / "xdg"), **env})
  assert out.returncode == 0, out.stderr
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_cache_in_the_default_place_is_filled_then_reused(tmp_path):
  first = _run(tmp_path)
  where = tmp_path / "xdg" / "score_jax" / "jax"
  assert first["where"] == str(where)
  entries = sorted(p.name for p in where.rglob("*") if p.is_file())
  assert entries  # the program was written
  second = _run(tmp_path)
  assert sorted(p.name for p in where.rglob("*") if p.is_file()) == entries  # loaded, not written again
  print(f"compile {first['seconds']:.3f} s, from the cache {second['seconds']:.3f} s")


def test_opt_out_and_chosen_directory(tmp_path, monkeypatch):
  import jax

  before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  try:
    monkeypatch.setenv(compile_cache.ENV_DISABLE, "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "off"))
    assert compile_cache.enable() is None and not (tmp_path / "off").exists()
    assert jax.config.jax_compilation_cache_dir == before[0]  # untouched
    monkeypatch.delenv(compile_cache.ENV_DISABLE)
    monkeypatch.setenv(compile_cache.ENV_DIR, str(tmp_path / "mine"))
    assert compile_cache.default_dir() == tmp_path / "mine"
    assert compile_cache.enable(tmp_path / "given") == tmp_path / "given"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "given") and (tmp_path / "given").is_dir()
  finally:
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])


def test_importing_the_module_changes_nothing():
  code = ("import json, os, jax; before = (dict(os.environ), jax.config.jax_compilation_cache_dir); "
          "import score_jax.compile_cache; "
          "print(json.dumps((dict(os.environ), jax.config.jax_compilation_cache_dir) == before))")
  base = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120, env=base)
  assert out.returncode == 0 and json.loads(out.stdout.strip().splitlines()[-1]) is True, out.stderr
  assert compile_cache.ENV_DISABLE == "SCORE_JAX_NO_COMPILE_CACHE"
