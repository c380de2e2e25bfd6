"""Every config under configs/ (except the toy and the classifiers: test_toy_*, test_classifier) loads, matches
the original's resolved config, and builds.

The references are the original's fully resolved configs and parameter trees in
``../shared/fixtures/score_sde_jax/param_trees/`` (one JSON per config file). Models are built only through
``jax.eval_shape`` (no compile), and only for the model names already in ``builders.MODEL_BUILDERS``.
"""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest
from flax import traverse_util
from helpers import ROOT, SHARED, experiment

from score_jax import builders, configs_loader

CONFIG_DIR = ROOT / "configs"
JAX_TREES = SHARED / "fixtures" / "score_sde_jax" / "param_trees"
TORCH_FULL_CONFIGS = SHARED / "fixtures" / "score_sde_pytorch" / "full_configs"

CONFIGS = sorted(str(p.relative_to(ROOT)) for p in CONFIG_DIR.rglob("*.py")
                 if p.name != "__init__.py"
                 # edm and cpu have their own tests (test_edm_configs, test_cpu_config)
                 and not {"toy", "classifier", "edm", "cpu"} & set(p.relative_to(CONFIG_DIR).parts))
DEFAULTS = [c for c in CONFIGS if pathlib.Path(c).name.startswith("default_")]
EXPERIMENTS = [c for c in CONFIGS if c not in DEFAULTS]

# Fields only score_jax reads, added to the original's (flat name -> value every config must have).
SCORE_JAX_FIELDS = {
    "training.eps": 1e-5,
    "training.n_projections": 1,
    "training.overwrite": False,
    "sampling.eps": 1e-3,
    "sampling.snr_reduction": "batch",
    "sampling.ode_rtol": 1e-5,
    "sampling.ode_atol": 1e-5,
    "training.parallel": "jit",
    "training.bf16": False,
    "training.keep_snapshots": 0,
    "training.snapshot_num_samples": 64,
    "training.grad_accum_steps": 1,
    "model.remat": "none",
    "model.label_dim": 0,
    "training.label_dropout": 0.0,
    "sampling.class_label": -1,
    "sampling.guidance": 1.0,
    "eval.bpd_num_repeats": 5,
    "eval.bpd_num_examples": 0,
    "eval.inception_weights": "",
    "eval.fid_stats": "",
    "eval.resize": "tf",
    "data.root": "",
    "data.data_dir": "",
    "sampling.N": 0,
    "sampling.ode_solver": "tsit5",
    "sampling.ode_steps": 0,
    "sampling.schedule": "",
    "sampling.eta": 0.0,
    "sampling.rho": 7.0,
    "sampling.clip_denoised": False,
}
SCORE_JAX_DERIVED = {"training.loss"}  # checked by test_training_loss_follows_sde_and_continuous
# EDM's sampler fields (builders.EDM_SAMPLING_DEFAULTS), in the CIFAR-10 default only; other configs get the defaults.
EDM_SAMPLING_FIELDS = {f"sampling.{k}" for k in builders.EDM_SAMPLING_DEFAULTS if k != "N"}

_ABSENT = object()
# Deliberate departures from the original's resolved config; each config's docstring or comment says why.
KNOWN_DEVIATIONS = {
    # The original misspells `training.continuous = False` as `training.continuouse`.
    "configs/ve/ncsnv2/bedroom.py": {"training.continuous": False, "training.continuouse": _ABSENT},
    # The original stores a torch device; JAX has no use for it.
    "configs/ve/celebahq_ncsnpp_continuous.py": {"device": _ABSENT},
    "configs/ve/ffhq_ncsnpp_continuous.py": {"device": _ABSENT},
}

EXPECTED_COUNT = 42  # the original's configs/ holds 42 files: 3 defaults + 39 experiments


def _fixture_name(config_path: str) -> str:
  return config_path[:-len(".py")].replace("/", "__")


def _load(config_path: str):
  return configs_loader.load_config(ROOT / config_path)


def _flat(d: dict) -> dict:
  return traverse_util.flatten_dict(d, sep=".")


def _normalise(value):
  """Tuples and lists compare equal; numbers keep their type (a command-line override must parse alike)."""
  if isinstance(value, (list, tuple)):
    return [_normalise(v) for v in value]
  if isinstance(value, (bool, int, float)):
    return type(value).__name__, value
  return value


def _reference_config(config_path: str) -> dict:
  """The original's resolved config of ``config_path``, or skip if no fixture holds one."""
  candidates = [JAX_TREES / f"{_fixture_name(config_path)}.json",
                TORCH_FULL_CONFIGS / f"{_fixture_name(config_path).removeprefix('configs__')}.json"]
  existing = [p for p in candidates if p.exists()]
  if not existing:
    pytest.skip(f"no reference fixture for {config_path} (../shared is absent?); set SCORE_JAX_SHARED")
  for path in existing:
    fixture = json.loads(path.read_text())
    if "config" in fixture:
      return fixture["config"]
  pytest.skip(f"the reference fixtures hold no resolved config for {config_path} "
              f"({existing[-1].name}: {fixture.get('status', 'no config')})")


def test_every_original_config_is_ported():
  assert len(CONFIGS) == EXPECTED_COUNT, CONFIGS
  assert len(DEFAULTS) == 3
  for package in ["ve", "vp", "subvp", "ve/ncsn", "ve/ncsnv2", "vp/ddpm"]:
    assert (CONFIG_DIR / package / "__init__.py").is_file(), package


@pytest.mark.parametrize("config_path", CONFIGS)
def test_config_loads_and_documents_its_command(config_path):
  config = _load(config_path)
  assert config.seed == 42
  for name, value in SCORE_JAX_FIELDS.items():
    section, field = name.split(".")
    assert config[section][field] == value, name
  docstring = ast.get_docstring(ast.parse((ROOT / config_path).read_text()))
  assert docstring and f"python -m score_jax.main --config {config_path}" in docstring


@pytest.mark.parametrize("config_path", EXPERIMENTS)
def test_config_matches_original(config_path):
  reference = _flat(_reference_config(config_path))
  for name, value in KNOWN_DEVIATIONS.get(config_path, {}).items():
    if value is _ABSENT:
      reference.pop(name)
    else:
      reference[name] = value
  ours = {k: v for k, v in _flat(_load(config_path).to_dict()).items()
          if k not in SCORE_JAX_FIELDS and k not in SCORE_JAX_DERIVED and k not in EDM_SAMPLING_FIELDS}
  assert sorted(ours) == sorted(reference)
  mismatched = {k: (ours[k], reference[k]) for k in ours if _normalise(ours[k]) != _normalise(reference[k])}
  assert not mismatched


@pytest.mark.parametrize("config_path", EXPERIMENTS)
def test_training_loss_follows_sde_and_continuous(config_path):
  training = _load(config_path).training
  expected = "dsm" if training.continuous else {"vesde": "smld", "vpsde": "ddpm"}[training.sde]
  assert training.loss == expected


@pytest.mark.parametrize("config_path", EXPERIMENTS)
def test_build_sde(config_path):
  config = _load(config_path)
  sde = builders.build_sde(config)
  assert sde.N == config.model.num_scales


@pytest.mark.parametrize("config_path", EXPERIMENTS)
def test_model_param_tree_matches_original(config_path, key):
  config = _load(config_path)
  name = config.model.name
  if name not in builders.MODEL_BUILDERS:
    pytest.skip(f"model {name} not registered yet")
  # pipeline.setup initialises the network on a [1, H, W, C] input and labels [1], as the reference's init_model
  # (shapes only; shared with the dry validation in test_pipeline.py)
  variables = {"params": experiment(config_path).abstract_state.params}
  ours = {path: (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in traverse_util.flatten_dict(variables, sep="/").items()}
  tree_file = JAX_TREES / f"{_fixture_name(config_path)}.json"
  if not tree_file.exists():
    if "/ncsn/" in config_path:
      pytest.skip(f"{config_path}: the model builds, but there is no reference tree (the original ncsn "
                  "cannot be built; see the fixture _summary.json)")
    pytest.skip(f"reference fixture {tree_file} not found; set SCORE_JAX_SHARED")
  tree = json.loads(tree_file.read_text())["tree"]  # [["params/path/to/leaf", shape, dtype], ...]
  reference = {path: (tuple(shape), dtype) for path, shape, dtype in tree}
  assert sorted(set(ours) - set(reference)) == [] and sorted(set(reference) - set(ours)) == []
  assert {p: s for p, s in ours.items() if reference[p] != s} == {}


def test_config_import_root(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert configs_loader.config_import_root(CONFIG_DIR / "ve" / "ncsn" / "cifar10.py") == ROOT
  assert configs_loader.config_import_root(f"{CONFIG_DIR / 've' / 'cifar10_ncsnpp.py'}:an_argument") == ROOT
  # A user's own config outside any configs package imports the shared defaults of this checkout.
  assert configs_loader.config_import_root(tmp_path / "my_config.py") == ROOT


def _launcher(cwd, config_arg, workdir):
  # An unknown field fails flag parsing right after the file is loaded, so nothing is ever trained.
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "score_jax.main", f"--config={config_arg}", "--workdir",
                         str(workdir), "--config.training.no_such_field=1"],
                        cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_launcher_loads_config_by_path(where, tmp_path):
  """``--config`` by path resolves ``from configs.default_* import`` from the repo root and elsewhere."""
  if where == "repo_root":
    result = _launcher(ROOT, "configs/ve/ncsn/cifar10.py", tmp_path / "run")
  else:
    result = _launcher(tmp_path, CONFIG_DIR / "ve" / "ncsn" / "cifar10.py", tmp_path / "run")
  output = result.stdout + result.stderr
  assert "No module named 'configs'" not in output
  assert result.returncode != 0 and "no_such_field" in output, output[-2000:]
  assert not (tmp_path / "run").exists()
