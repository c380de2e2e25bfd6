"""Runs the two-device tests of ``tests/multi_device/`` in a fresh interpreter with two simulated CPU devices.

``XLA_FLAGS=--xla_force_host_platform_device_count=2`` must be set before JAX starts, which this test process
has already done; the tests themselves are ordinary pytest tests in that folder.
"""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDER = pathlib.Path(__file__).resolve().parent / "multi_device"


def test_the_two_device_tests_pass_on_two_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
                         "-rs", str(FOLDER)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  tail = proc.stdout[-4000:] + proc.stderr[-2000:]
  assert proc.returncode == 0, tail
  summary = proc.stdout.strip().splitlines()[-1]
  passed = re.search(r"(\d+) passed", summary)
  assert passed and int(passed.group(1)) >= 8, tail
  assert "skipped" not in summary, tail  # every test ran with two devices
