"""Checkpoint conversion from the two originals (score_sde_pytorch ``.pth``, score_sde ``checkpoint_N``).

Key/shape mapping is checked against the original Flax trees (``score_sde_jax/param_trees`` and the
small numeric fixture). Until the 'ncsnpp' network is registered in ``builders.MODEL_BUILDERS``, the
network is stood in for by a module that only creates the original's parameter tree, and the numeric
comparisons with the PyTorch outputs are skipped; once it is registered they run against it.
"""

import json
import os
import pathlib

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import SHARED

from score_jax import builders, convert, models

TORCH_NETS = SHARED / "fixtures" / "score_sde_pytorch" / "networks"
TORCH_FULL = SHARED / "fixtures" / "score_sde_pytorch" / "full_configs"
JAX_FIX = SHARED / "fixtures" / "score_sde_jax"
JAX_TREES = JAX_FIX / "param_trees"
JAX_CKPT = JAX_FIX / "numeric" / "ncsnpp_ve_cont_small_checkpoint" / "checkpoint_2"
TORCH_CKPT = TORCH_NETS / "ncsnpp_ve_cont_small_checkpoint.pth"
STAND_IN = "_original_param_tree"  # model.name of the stand-in network
REL_TOL = 1e-5  # max abs error / max abs reference, network outputs vs the PyTorch original
TUPLE_FIELDS = ("ch_mult", "attn_resolutions", "fir_kernel")


def _need(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f"reference fixture {path} not found (../shared is absent); set SCORE_JAX_SHARED to its path")
  return path


def _json(path):
  return json.loads(_need(path).read_text())


def _config(cfg: dict) -> ml_collections.ConfigDict:
  cfg = json.loads(json.dumps(cfg))
  for f in TUPLE_FIELDS:
    if f in cfg["model"]:
      cfg["model"][f] = tuple(cfg["model"][f])
  return ml_collections.ConfigDict(cfg)


def _small_flax_tree() -> dict:
  """The original Flax param shapes of ncsnpp_ve_cont_small, in creation order."""
  keys = _json(JAX_FIX / "numeric" / "ncsnpp_ve_cont_small.json")["files"]["ncsnpp_ve_cont_small_params.npz"]["keys"]
  return {p: tuple(s) for p, s in keys.items()}


def _full_flax_tree(name: str) -> dict:
  return {p: tuple(s) for p, s, _ in _json(JAX_TREES / f"configs__{name}.json")["tree"]}


class _Node(nn.Module):
  """Creates the parameters ``entries`` ((path, shape), ...) in order, nesting modules by path."""

  entries: tuple

  @nn.compact
  def __call__(self):
    groups: list = []
    for path, shape in self.entries:
      if groups and groups[-1][0] == path[0] and len(path) > 1:
        groups[-1][1].append((path[1:], shape))
      else:
        groups.append((path[0], [(path[1:], shape)]))
    for name, sub in groups:
      if sub[0][0]:
        _Node(tuple(sub), name=name)()
      else:
        self.param(name, lambda key, s: jnp.zeros(s, jnp.float32), sub[0][1])


def _stand_in(monkeypatch, config, tree: dict):
  """``config`` with a stand-in network that creates exactly ``tree`` (no computation)."""
  entries = tuple((tuple(p.split("/")[1:]), s) for p, s in tree.items())

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x, labels, train=False):
      groups: dict = {}
      for path, shape in entries:
        groups.setdefault(path[0], []).append((path[1:], shape))
      for name, sub in groups.items():
        _Node(tuple(sub), name=name)()
      return x

  monkeypatch.setitem(builders.MODEL_BUILDERS, STAND_IN, lambda cfg: Net())
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.name = STAND_IN
  return config


def _real_network() -> bool:
  return "ncsnpp" in builders.MODEL_BUILDERS


@pytest.fixture
def small_config(monkeypatch):
  """ncsnpp_ve_cont_small's config; its network is the real one when registered, else the stand-in."""
  config = _config(_json(TORCH_NETS / "ncsnpp_ve_cont_small.json")["config"])
  return config if _real_network() else _stand_in(monkeypatch, config, _small_flax_tree())


def _nhwc(a):
  return np.transpose(a, (0, 2, 3, 1))


def _rel_err(out, ref):
  return float(np.max(np.abs(np.asarray(out) - ref)) / np.max(np.abs(ref)))


def _assert_same(a: dict, b: dict):
  fa, fb = dict(convert._flatten(a)), dict(convert._flatten(b))
  assert list(fa) == list(fb)
  for p in fa:
    np.testing.assert_array_equal(np.asarray(fa[p]), np.asarray(fb[p]), err_msg=p)


def _check_outputs(config, variables, x_nhwc, labels, t, out_ref, score_ref):
  model = builders.build_model(config)
  out = model.apply(variables, jnp.asarray(x_nhwc), jnp.asarray(labels), train=False)
  assert _rel_err(out, out_ref) <= REL_TOL
  score_fn = models.get_score_fn(builders.build_sde(config), model, variables, train=False, continuous=True)
  assert _rel_err(score_fn(jnp.asarray(x_nhwc), jnp.asarray(t)), score_ref) <= REL_TOL


# ------------------------------------------------------------------------------------------ mapping


def _full_size_pairs():
  if not TORCH_FULL.exists():
    return []
  # Configs that one of the originals cannot build have no table (see their _build_notes.json / _summary.json).
  return sorted(p.stem for p in TORCH_FULL.glob("[!_]*.json")
                if "state_dict" in json.loads(p.read_text()) and (JAX_TREES / f"configs__{p.stem}.json").exists())


@pytest.mark.parametrize("name", _full_size_pairs() or ["(fixtures absent)"])
def test_full_size_mapping_matches_original_trees(name):
  """Every full-size config: the PyTorch state_dict table maps onto the original Flax tree."""
  table = _json(TORCH_FULL / f"{name}.json")
  tree = _full_flax_tree(name)
  state_dict = {k: np.zeros(s, np.uint8) for k, s, _ in table["state_dict"]}
  if table["model_class"].startswith("NCSNv2"):
    with pytest.raises(convert.CheckpointMismatchError, match="all_modules"):
      convert.convert_pytorch_state_dict(state_dict, tree)
    return
  variables = convert.convert_pytorch_state_dict(state_dict, tree)
  got = {p: v.shape for p, v in convert._flatten(variables)}
  assert got == tree and list(got) == list(tree)


def test_param_shapes_keeps_creation_order(small_config):
  assert list(convert.param_shapes(small_config).items()) == list(_small_flax_tree().items())


@pytest.mark.parametrize("which", ["params", "params_perturbed"])
@pytest.mark.parametrize("name", ["ncsnpp_ve_cont_small", "ddpmpp_vp_cont_small"])
def test_pytorch_fixture_state_dict(monkeypatch, name, which):
  meta = _json(TORCH_NETS / f"{name}.json")
  state_dict = dict(np.load(_need(TORCH_NETS / f"{name}_{which}.npz")))
  config = _config(meta["config"])
  if not _real_network():
    if name != "ncsnpp_ve_cont_small":
      pytest.skip("no small Flax tree of the original for DDPM++ among the fixtures (its full-size mapping is "
                  "checked in test_full_size_mapping_matches_original_trees); the numeric check needs the "
                  "'ncsnpp' network in builders.MODEL_BUILDERS")
    config = _stand_in(monkeypatch, config, _small_flax_tree())
  variables = convert.from_pytorch_state_dict(state_dict, config)
  flat = dict(convert._flatten(variables))
  assert {p: v.shape for p, v in flat.items()} == convert.param_shapes(config)
  if name == "ncsnpp_ve_cont_small":  # layouts, by value
    sd = state_dict
    np.testing.assert_array_equal(flat["params/GaussianFourierProjection_0/W"], sd["module.all_modules.0.W"])
    np.testing.assert_array_equal(flat["params/Dense_0/kernel"], sd["module.all_modules.1.weight"].T)
    np.testing.assert_array_equal(flat["params/Conv_0/kernel"],
                                  sd["module.all_modules.3.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(flat["params/ResnetBlockBigGANpp_0/GroupNorm_0/scale"],
                                  sd["module.all_modules.4.GroupNorm_0.weight"])
    np.testing.assert_array_equal(flat["params/AttnBlockpp_0/NIN_0/W"], sd["module.all_modules.8.NIN_0.W"])
  if not _real_network():
    pytest.skip("numeric check vs the PyTorch outputs needs the 'ncsnpp' network in builders.MODEL_BUILDERS "
                "(key/shape/layout mapping checked above)")
  io = np.load(_need(TORCH_NETS / f"{name}_io.npz"))
  suffix = "init" if which == "params" else "perturbed"
  _check_outputs(config, variables, _nhwc(io["x"]), io["labels"], io["t"],
                 _nhwc(io[f"out_{suffix}"]), _nhwc(io[f"score_{suffix}"]))


# ---------------------------------------------------------------------------------------- checkpoints


def _expected_torch(small_config, prefix):
  exp = np.load(_need(TORCH_NETS / "ncsnpp_ve_cont_small_checkpoint_expected.npz"))
  state_dict = {k[len(prefix):]: exp[k] for k in exp.files if k.startswith(prefix)}
  return convert.from_pytorch_state_dict(state_dict, small_config), exp


@pytest.mark.parametrize("ema", [True, False])
def test_load_pytorch_checkpoint(small_config, ema):
  pytest.importorskip("torch")
  variables = convert.load_pytorch_checkpoint(_need(TORCH_CKPT), small_config, ema=ema)
  expected, exp = _expected_torch(small_config, "ema/" if ema else "model/")
  _assert_same(variables, expected)
  if not _real_network():
    pytest.skip("outputs of the loaded weights need the 'ncsnpp' network in builders.MODEL_BUILDERS")
  kind = "ema" if ema else "raw"
  _check_outputs(small_config, variables, _nhwc(exp["x"]), exp["labels"], exp["t"],
                 _nhwc(exp[f"out_{kind}"]), _nhwc(exp[f"score_{kind}"]))


def test_load_score_sde_checkpoint(small_config):
  exp = np.load(_need(JAX_FIX / "numeric" / "ncsnpp_ve_cont_small_checkpoint_expected.npz"))
  variables = convert.load_score_sde_checkpoint(_need(JAX_CKPT), small_config)
  flat = dict(convert._flatten(variables))
  assert list(flat) == list(_small_flax_tree())
  for p, v in flat.items():
    np.testing.assert_array_equal(v, exp[p], err_msg=p)
  raw = dict(convert._flatten(convert.load_score_sde_checkpoint(JAX_CKPT, small_config, ema=False)))
  assert any(not np.array_equal(raw[p], flat[p]) for p in flat)  # optimizer.target, not params_ema
  if not _real_network():
    pytest.skip("outputs of the loaded weights need the 'ncsnpp' network in builders.MODEL_BUILDERS")
  _check_outputs(small_config, variables, exp["x"], exp["labels"], exp["t"], exp["raw_output_params_ema"],
                 exp["score_params_ema"])


def test_missing_torch_names_the_extra(monkeypatch):
  monkeypatch.setitem(__import__("sys").modules, "torch", None)
  with pytest.raises(ImportError, match=r'pip install -e "\.\[torch\]"'):
    convert.load_pytorch_checkpoint(TORCH_CKPT, None)


# ------------------------------------------------------------------------------------------------ CLI


def _config_file(tmp_path, config) -> pathlib.Path:
  """A config file (under a configs/ folder, as in the repository) returning ``config``."""
  path = tmp_path / "configs" / "small.py"
  path.parent.mkdir()
  path.write_text(
      "import json\n\nimport ml_collections\n\n\ndef get_config():\n"
      f"  cfg = json.loads({config.to_json()!r})\n"
      f"  for f in {TUPLE_FIELDS!r}:\n"
      "    if f in cfg['model']:\n"
      "      cfg['model'][f] = tuple(cfg['model'][f])\n"
      "  return ml_collections.ConfigDict(cfg)\n")
  return path


def _loader(source, ema=True):
  if source == "score_sde_pytorch":
    pytest.importorskip("torch")
    return lambda cfg: convert.load_pytorch_checkpoint(_need(TORCH_CKPT), cfg, ema=ema)
  return lambda cfg: convert.load_score_sde_checkpoint(_need(JAX_CKPT), cfg, ema=ema)


def _snapshot(path: pathlib.Path):
  return sorted((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


@pytest.mark.parametrize("source", ["score_sde", "score_sde_pytorch"])
def test_cli_end_to_end(tmp_path, small_config, source, capsys):
  load = _loader(source, ema=False)
  src = TORCH_CKPT if source == "score_sde_pytorch" else JAX_CKPT
  cfg_file = _config_file(tmp_path, small_config)
  dst = tmp_path / "out" / "converted"
  assert convert.main(["--from", source, "--config", str(cfg_file), "--no-ema", str(src), str(dst)]) == 0
  assert "Wrote" in capsys.readouterr().out
  assert [p.name for p in dst.parent.iterdir()] == ["converted"]  # no temporary directory left
  _assert_same(convert.load_converted(dst, small_config), load(small_config))
  assert convert._restore(dst)["step"] == (5002 if source == "score_sde_pytorch" else 2)

  before = _snapshot(dst)
  assert convert.main(["--from", source, "--config", str(cfg_file), str(src), str(dst)]) == 2
  assert "already exists" in capsys.readouterr().err
  assert _snapshot(dst) == before


def test_cli_help(capsys):
  with pytest.raises(SystemExit) as e:
    convert.main(["--help"])
  assert e.value.code == 0
  out = " ".join(capsys.readouterr().out.split())
  assert "--from {score_sde,score_sde_pytorch}" in out and "--no-ema" in out and "must not exist" in out


# ---------------------------------------------------------------------------------- wrong checkpoints


@pytest.fixture
def full_config(monkeypatch):
  """The full-size ve/cifar10_ncsnpp_continuous config, with the original's tree as its network."""
  name = "ve__cifar10_ncsnpp_continuous"
  return _stand_in(monkeypatch, _config(_json(JAX_TREES / f"configs__{name}.json")["config"]), _full_flax_tree(name))


def test_wrong_state_dict_lists_mismatches(small_config):
  state_dict = dict(np.load(_need(TORCH_NETS / "ncsnpp_ve_cont_small_params.npz")))
  del state_dict["module.all_modules.4.Conv_0.bias"]
  state_dict["module.all_modules.4.Conv_1.weight"] = np.zeros((16, 16, 1, 1), np.float32)
  state_dict["module.all_modules.4.Extra_0.weight"] = np.zeros((3,), np.float32)
  with pytest.raises(ValueError) as e:
    convert.from_pytorch_state_dict(state_dict, small_config)
  msg = str(e.value)
  assert "3 mismatches" in msg
  assert "missing all_modules.4.Conv_0.bias" in msg
  assert "shape of all_modules.4.Conv_1.weight" in msg
  assert "unexpected all_modules.4.Extra_0.weight" in msg


@pytest.mark.parametrize("source", ["score_sde", "score_sde_pytorch"])
def test_small_checkpoint_against_full_config_is_refused(tmp_path, full_config, source, capsys):
  with pytest.raises(ValueError, match="does not fit the network of this config") as e:
    _loader(source)(full_config)
  assert "mismatches" in str(e.value) and "shape of" in str(e.value)

  src = TORCH_CKPT if source == "score_sde_pytorch" else JAX_CKPT
  dst = tmp_path / "converted"
  rc = convert.main(["--from", source, "--config", str(_config_file(tmp_path, full_config)), str(src), str(dst)])
  assert rc == 1 and "does not fit" in capsys.readouterr().err
  assert not dst.exists() and sorted(os.listdir(tmp_path)) == ["configs"]
