"""score_jax's CPU default for XLA (score_jax/xla_cpu.py): when it is added, and that it takes effect."""

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from score_jax import xla_cpu


def test_the_flag_is_added_to_existing_flags_on_a_tested_jaxlib():
  assert xla_cpu.flags_with_defaults("", "0.10.2") == xla_cpu.FLAG
  got = xla_cpu.flags_with_defaults("--xla_force_host_platform_device_count=2", "0.10.0")
  assert got == f"--xla_force_host_platform_device_count=2 {xla_cpu.FLAG}"


@pytest.mark.parametrize("flags,version,opt_out", [
    (f"--{xla_cpu.FLAG_NAME}=LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT", "0.10.2", None),  # the user's choice wins
    ("", "0.10.2", "1"),  # opted out
    ("", "0.9.2", None),  # untested releases: XLA aborts on unknown flags
    ("", "0.11.0", None),
    ("", None, None),  # no jaxlib metadata
])
def test_the_flag_is_left_out(flags, version, opt_out):
  assert xla_cpu.flags_with_defaults(flags, version, opt_out) is None


def test_apply_changes_only_the_given_environment():
  env = {"XLA_FLAGS": "--xla_cpu_enable_fast_math=false", xla_cpu.OPT_OUT_ENV: "0"}
  added = xla_cpu.apply(env)
  version = importlib.metadata.version("jaxlib")
  assert added == (xla_cpu.flags_with_defaults("", version) is not None)
  assert env["XLA_FLAGS"].startswith("--xla_cpu_enable_fast_math=false")
  assert (xla_cpu.FLAG in env["XLA_FLAGS"]) == added


_PROBE = """
import jax, jax.numpy as jnp
import score_jax
score_jax.xla_cpu.apply()  # the one call for library users, before JAX's first computation
x, w = jnp.ones((8, 32, 32, 256)), jnp.ones((3, 3, 256, 256))
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
print('__ynn_fusion' in jax.jit(conv).lower(x, w).compile().as_text())
"""


def _convolution_goes_to_ynnpack(opt_out: str) -> bool:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env[xla_cpu.OPT_OUT_ENV] = opt_out
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.strip().splitlines()[-1] == "True"


def test_apply_keeps_convolutions_out_of_ynnpack_even_after_importing_jax():
  if xla_cpu.flags_with_defaults("", importlib.metadata.version("jaxlib")) is None:
    pytest.skip(f"jaxlib {importlib.metadata.version('jaxlib')} is outside xla_cpu.TESTED_JAXLIB")
  assert _convolution_goes_to_ynnpack("1"), "jaxlib's default no longer sends this convolution to YNNPACK"
  assert not _convolution_goes_to_ynnpack("0")


_IMPORT_PROBE = """
import json, os, sys
before = dict(os.environ)
import matplotlib
import score_jax, score_jax.plots, score_jax.cli, score_jax.main, score_jax.eval  # noqa: F401
print(json.dumps({"environ_unchanged": dict(os.environ) == before,
                  "backend_chosen": matplotlib.rcParams._get_backend_or_none()}))
"""


def test_importing_score_jax_changes_no_environment_variable_and_no_backend():
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MPLBACKEND")}
  env[xla_cpu.OPT_OUT_ENV] = "0"
  out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout.strip().splitlines()[-1]) == {"environ_unchanged": True, "backend_chosen": None}


_RUN_PROBE = """
import os
from score_jax import cli
print(cli.run(lambda args: print(repr(os.environ.get("XLA_FLAGS", ""))), [], parser=cli.ArgumentParser(prog="x")))
"""


def test_the_command_line_applies_the_cpu_default():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env[xla_cpu.OPT_OUT_ENV] = "0"
  out = subprocess.run([sys.executable, "-c", _RUN_PROBE], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  flags, code = out.stdout.strip().splitlines()[-2:]
  expected = xla_cpu.flags_with_defaults("", importlib.metadata.version("jaxlib")) or ""
  assert (flags, code) == (repr(expected), "0")
