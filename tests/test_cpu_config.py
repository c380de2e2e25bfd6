"""configs/cpu/: the README's CPU-scale CIFAR-10 recipe loads, documents its command, has the size the README
states, and refuses to start without its data."""

import ast

import pytest
from helpers import ROOT, SHARED, experiment
from test_configs import SCORE_JAX_FIELDS

from score_jax import configs_loader, pipeline

PATH = "configs/cpu/cifar10_ddpmpp.py"
CIFAR = SHARED / "data" / "cifar10-jpeg.tar.gz"


def test_cpu_config_documents_its_command_and_has_the_stated_size():
  config = configs_loader.load_config(ROOT / PATH)
  for name in SCORE_JAX_FIELDS:
    section, field = name.split(".")
    assert section in config and field in config[section], name
  docstring = ast.get_docstring(ast.parse((ROOT / PATH).read_text()))
  assert f"python -m score_jax.main --config {PATH}" in docstring
  assert f"--config {PATH}" in (ROOT / "README.md").read_text()
  summary = pipeline.dry_run(config, check_data=False, trace_step=False, exp=experiment(PATH))
  assert summary["n_params"] == 1_754_147  # the model of docs/reproduce.md's side-by-side run
  assert (config.sampling.method, config.sampling.N, config.eval.num_samples) == ("dpm_solver", 10, 5000)


def test_cpu_config_without_its_data_says_which_field_to_set():
  config = configs_loader.load_config(ROOT / PATH)
  with pytest.raises(ValueError, match="data.root"):
    pipeline.dry_run(config, check_data=True, trace_step=False, exp=experiment(PATH))


@pytest.mark.skipif(not CIFAR.exists(), reason=f"needs the CIFAR-10 archive at {CIFAR} (../shared absent)")
def test_cpu_config_opens_the_cifar10_archive():
  config = configs_loader.load_config(ROOT / PATH)
  config.data.root = str(CIFAR)
  summary = pipeline.dry_run(config, check_data=True, trace_step=False, exp=experiment(PATH))
  assert summary["n_params"] == 1_754_147
