"""The one command-line convention (score_jax/cli.py) of every ``python -m score_jax.*`` entry point.

Each entry point runs in a subprocess with one bad value and must fail with a non-zero status and exactly
one stderr line ``score_jax: error: ...`` naming the value, without a traceback and before any JAX
compile. The unit tests below check the override parser (types, tuples, booleans, typo suggestions), and
that every command of README.md and docs/*.md still parses.
"""

import concurrent.futures
import importlib
import os
import pathlib
import re
import shlex
import subprocess
import sys

import ml_collections
import pytest

from score_jax import cli, xla_cpu

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = "configs/toy/gmm2d.py"
IMAGE = "configs/ve/ncsn/cifar10.py"
ENTRY_POINTS = ("main", "ablate", "controllable", "eval", "convert", "inception")
# The module whose main(argv) / parser() serve an entry point run in process: python -m score_jax.inception runs
# the convert command of score_jax.fid_weights (the converters live there; inception is the network).
COMMAND_MODULE = {"inception": "fid_weights"}


# ---- fixtures: bad files, a read-only and a full file system ------------------------------------------------


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cli")
  (tmp / "syntax.py").write_text("import ml_collections\n\ndef get_config(:\n  pass\n")
  (tmp / "no_get_config.py").write_text("import ml_collections\n\nCONFIG = 1\n")
  (tmp / "a_file").write_text("not a directory\n")
  (tmp / "run").mkdir()
  (tmp / "stats.npz").write_bytes(b"keep")
  (tmp / "dst").mkdir()
  return {"tmp": str(tmp), "syntax": str(tmp / "syntax.py"), "noget": str(tmp / "no_get_config.py"),
          "file": str(tmp / "a_file"), "run": str(tmp / "run"), "stats": str(tmp / "stats.npz"),
          "dst": str(tmp / "dst")}


def _mount(target: pathlib.Path, options: str) -> str | None:
  """Mounts a tiny tmpfs at ``target``; the reason it cannot, or None."""
  target.mkdir()
  try:
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True,
                         text=True, timeout=30)
  except (OSError, subprocess.SubprocessError) as e:
    return f"mount is not available: {e}"
  return None if out.returncode == 0 else f"mount -t tmpfs failed: {out.stderr.strip()}"


@pytest.fixture(scope="module")
def mounts(tmp_path_factory):
  """``ro``: a read-only tmpfs; ``full``: a tmpfs with no inode left (every create fails with ENOSPC).

  The tests run as root, so permission bits would not stop a write; a mount does."""
  base = tmp_path_factory.mktemp("mounts")
  made, reasons = {}, {}
  for name, options in (("ro", "ro,size=64k"), ("full", "size=64k,nr_inodes=1")):
    reason = _mount(base / name, options)
    if reason is None:
      made[name] = str(base / name)
    else:
      reasons[name] = reason
  yield made, reasons
  for target in made.values():
    subprocess.run(["umount", target], capture_output=True, timeout=30)


# ---- every entry point, one bad value at a time -------------------------------------------------------------

# (entry point, argv, the text the error line must contain, exit status); {name} is one of `paths`.
BAD = {
    "main: typo'd override key": (
        "main", ["--config", TOY, "--workdir", "{tmp}/w", "--config.training.n_iter=5"],
        "--config.training.n_iter is not a config field; did you mean --config.training.n_iters", 2),
    "main: int field given text": (
        "main", ["--config", TOY, "--workdir", "{tmp}/w", "--config.training.n_iters=many"], "'many'", 2),
    "main: tuple field given junk": (
        "main", ["--config", TOY, "--workdir", "{tmp}/w", "--config.model.features=(1,"], "'(1,'", 2),
    "main: bool field given junk": (
        "main", ["--config", IMAGE, "--workdir", "{tmp}/w", "--config.training.continuous=maybe"], "'maybe'", 2),
    "main: bad boolean flag": ("main", ["--config", TOY, "--workdir", "{tmp}/w", "--progress=maybe"], "'maybe'", 2),
    "main: missing config file": ("main", ["--config", "{tmp}/nope.py", "--workdir", "{tmp}/w"], "nope.py", 2),
    "main: config with a syntax error": ("main", ["--config", "{syntax}", "--workdir", "{tmp}/w"], "syntax.py:3", 2),
    "main: config without get_config": ("main", ["--config", "{noget}", "--workdir", "{tmp}/w"], "get_config", 2),
    "main: config is a directory": ("main", ["--config", "configs", "--workdir", "{tmp}/w"], "configs", 2),
    "main: unknown --mode": ("main", ["--config", TOY, "--workdir", "{tmp}/w", "--mode", "fly"], "'fly'", 2),
    "main: unknown flag": ("main", ["--config", TOY, "--wrkdir", "{tmp}/w"], "--wrkdir", 2),
    "main: missing --workdir": ("main", ["--config", TOY], "--workdir", 2),
    "main: workdir is a file": ("main", ["--config", TOY, "--workdir", "{file}"], "a_file is a file", 1),
    "main: workdir under a file": ("main", ["--config", IMAGE, "--workdir", "{file}/run"], "a_file is a file", 1),
    "main: --dry_run with --mode eval": (
        "main", ["--config", IMAGE, "--workdir", "{tmp}/w", "--mode", "eval", "--dry_run"], "--dry_run", 1),
    "main: 2-D default with batch 0": (  # was a NaN loss blaming the learning rate
        "main", ["--config", TOY, "--workdir", "{tmp}/w", "--config.training.batch_size=0"],
        "training.batch_size must be a positive int; got 0", 1),
    "main: bad config value": ("main", ["--config", TOY, "--workdir", "{tmp}/w", "--config.training.sde=vpde"],
                               "'vpde'", 1),
    "convert: typo'd override key": (
        "convert", ["--from", "score_sde", "--config", IMAGE, "--config.model.nff=2", "{tmp}/ckpt", "{tmp}/out"],
        "--config.model.nff is not a config field; did you mean --config.model.nf", 2),
    "convert: unknown --from": ("convert", ["--from", "torch", "--config", IMAGE, "{tmp}/ckpt", "{tmp}/out"],
                                "'torch'", 2),
    "convert: missing checkpoint": ("convert", ["--from", "score_sde", "--config", IMAGE, "{tmp}/ckpt_9",
                                                "{tmp}/out"], "ckpt_9", 1),
    "convert: destination exists": ("convert", ["--from", "score_sde", "--config", IMAGE, "{tmp}/ckpt", "{dst}"],
                                    "already exists", 2),
    "eval: unknown subcommand": ("eval", ["fly"], "'fly'", 2),
    "eval: samples directory missing": ("eval", ["metrics", "--samples", "{tmp}/no_samples", "--weights", "w.npz"],
                                        "no_samples", 1),
    "eval: --out exists": ("eval", ["stats", "--dataset", "npz", "--root", "x.npz", "--weights", "w.npz",
                                    "--out", "{stats}"], "stats.npz exists", 1),
    "eval: --batch_size not an integer": ("eval", ["stats", "--dataset", "npz", "--weights", "w", "--out", "o",
                                                   "--batch_size=ten"], "'ten'", 2),
    "inception: unknown subcommand": ("inception", ["fly"], "'fly'", 2),
    "inception: missing .pth": ("inception", ["convert", "--from", "{tmp}/fid.pth", "--out", "{tmp}/o.npz"],
                                "fid.pth", 1),
    "ablate: typo'd override key": (
        "ablate", ["--config", TOY, "--workdir", "{run}", "--out", "{tmp}/abl", "--num_samples", "8",
                   "--grid", "sampling.N=4", "--config.sampling.methd=ode"], "--config.sampling.methd", 2),
    "ablate: --num_samples not an integer": (
        "ablate", ["--config", TOY, "--workdir", "{run}", "--out", "{tmp}/abl", "--num_samples", "ten"], "'ten'", 2),
    "ablate: missing workdir": (
        "ablate", ["--config", TOY, "--workdir", "{tmp}/no_run", "--out", "{tmp}/abl", "--num_samples", "8",
                   "--grid", "sampling.N=4"], "no_run", 1),
    "controllable: unknown --task": (
        "controllable", ["--task", "fly", "--config", IMAGE, "--workdir", "{run}", "--out", "{tmp}/c"], "'fly'", 2),
    "controllable: missing images": (
        "controllable", ["--task", "colorize", "--config", IMAGE, "--workdir", "{run}", "--out", "{tmp}/c",
                         "--images", "{tmp}/missing.npz"], "missing.npz", 1),
    "controllable: config with a syntax error": (
        "controllable", ["--task", "class", "--config", "{syntax}", "--workdir", "{run}", "--out", "{tmp}/c"],
        "syntax.py:3", 2),
}


def _run(module: str, argv: list[str]) -> subprocess.CompletedProcess:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", f"score_jax.{module}", *argv], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def _assert_one_error_line(proc: subprocess.CompletedProcess, expected: str, code: int) -> None:
  lines = proc.stderr.strip().splitlines()
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
  assert len(lines) == 1 and lines[0].startswith("score_jax: error: "), proc.stderr[-3000:]
  assert expected in lines[0], lines[0]


# Entry points whose module imports JAX run their other cases in process (``main(argv)``, the same code
# path after the import), so that the file stays fast; each of them still has one case in a subprocess.
IN_PROCESS = {"main: 2-D default with batch 0",
              "eval: samples directory missing", "eval: --out exists", "eval: --batch_size not an integer",
              "inception: unknown subcommand", "ablate: --num_samples not an integer", "ablate: missing workdir",
              "controllable: unknown --task", "controllable: missing images"}


@pytest.fixture(scope="module")
def bad_runs(paths):
  """The subprocess cases of BAD, run side by side (their time is Python imports, not work)."""
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    futures = {case: pool.submit(_run, module, [a.format(**paths) for a in argv])
               for case, (module, argv, _, _) in BAD.items() if case not in IN_PROCESS}
    return {case: future.result() for case, future in futures.items()}


def _in_process(module: str, argv: list[str], capsys, monkeypatch) -> subprocess.CompletedProcess:
  monkeypatch.setenv(xla_cpu.OPT_OUT_ENV, "1")  # leave this process's XLA_FLAGS alone
  monkeypatch.chdir(ROOT)
  capsys.readouterr()
  try:
    code = importlib.import_module(f"score_jax.{COMMAND_MODULE.get(module, module)}").main(argv)
  except SystemExit as e:  # a usage error, from the parser
    code = e.code
  captured = capsys.readouterr()
  return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_value_is_one_error_line(case, paths, request, capsys, monkeypatch):
  module, argv, expected, code = BAD[case]
  if case in IN_PROCESS:
    proc = _in_process(module, [a.format(**paths) for a in argv], capsys, monkeypatch)
  else:
    proc = request.getfixturevalue("bad_runs")[case]
  _assert_one_error_line(proc, expected.format(**paths), code)


@pytest.mark.parametrize("where,expected", [("ro", "read-only"), ("full", "the disk is full")])
def test_an_unwritable_workdir_is_one_error_line(mounts, where, expected):
  made, reasons = mounts
  if where not in made:
    pytest.skip(reasons[where])
  workdir = f"{made[where]}/run"
  proc = _run("main", ["--config", TOY, "--workdir", workdir, "--noprogress"])
  _assert_one_error_line(proc, expected, 1)
  assert workdir in proc.stderr


@pytest.mark.parametrize("argv", [["main"], ["ablate"], ["controllable"], ["eval"], ["eval", "stats"],
                                  ["eval", "metrics"], ["convert"], ["inception"], ["inception", "convert"]],
                         ids=" ".join)
def test_help_prints_usage_and_exits_0(argv, capsys):
  module = importlib.import_module(f"score_jax.{COMMAND_MODULE.get(argv[0], argv[0])}")
  with pytest.raises(SystemExit) as e:
    module.parser().parse_args([*argv[1:], "--help"])
  assert e.value.code == 0
  assert capsys.readouterr().out.startswith("usage: python -m score_jax.")


def test_traceback_shows_the_traceback_of_an_expected_error(paths):
  proc = _run("main", ["--config", TOY, "--workdir", paths["file"], "--traceback"])
  assert proc.returncode != 0 and "Traceback" in proc.stderr and "NotADirectoryError" in proc.stderr


def test_an_unexpected_error_keeps_its_traceback():
  def broken(args):
    raise RuntimeError("a bug")

  with pytest.raises(RuntimeError, match="a bug"):
    cli.run(broken, [], parser=cli.ArgumentParser(prog="x"))


def test_an_expected_error_returns_1_with_one_line(capsys):
  def missing(args):
    open("/nonexistent/score_jax_cli_test")

  assert cli.run(missing, [], parser=cli.ArgumentParser(prog="x")) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("score_jax: error: ") and "/nonexistent/" in err


# ---- the override parser -------------------------------------------------------------------------------------


def _config():
  config = ml_collections.ConfigDict()
  config.training = ml_collections.ConfigDict(dict(n_iters=10, lr=1e-3, continuous=True, sde="vpsde"))
  config.model = ml_collections.ConfigDict(dict(attn_resolutions=(16,), ch_mult=(1, 2, 2), dropout=0.1))
  return config


@pytest.mark.parametrize("key,text,expected", [
    ("training.n_iters", "20", 20),
    ("training.lr", "2e-4", 2e-4),
    ("training.lr", "1", 1.0),  # an integer for a float field
    ("training.continuous", "False", False),
    ("training.continuous", "false", False),
    ("training.continuous", "0", False),
    ("training.continuous", "true", True),
    ("training.sde", "vesde", "vesde"),
    ("training.sde", "1", "1"),  # a string field keeps the text
    ("model.attn_resolutions", "(16,)", (16,)),
    ("model.attn_resolutions", "(8,16)", (8, 16)),
    ("model.attn_resolutions", "()", ()),
    ("model.ch_mult", "(1, 2)", (1, 2)),
    ("model.ch_mult", "4", (4,)),
])
def test_overrides_take_the_type_of_the_field(key, text, expected):
  config = _config()
  cli.apply_overrides(config, [(key, text)])
  section, field = key.split(".")
  value = config[section][field]
  assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("key,text,message", [
    ("training.n_iters", "1.5", "--config.training.n_iters='1.5' is not an integer"),
    ("training.lr", "fast", "--config.training.lr='fast' is not a number"),
    ("training.continuous", "maybe", "--config.training.continuous='maybe' is not a boolean"),
    ("model.ch_mult", "(1,", "--config.model.ch_mult='(1,' is not a tuple"),
    ("training.lrr", "1", "--config.training.lrr is not a config field; did you mean --config.training.lr"),
    ("trainin.lr", "1", "did you mean --config.training.lr"),
    ("model.drop_out", "0", "did you mean --config.model.dropout"),
    ("training.n_iters.x", "1", "--config.training.n_iters.x is not a config field"),
    ("optim.lr", "1", "did you mean --config.training.lr?"),  # no such section: the field's other places
])
def test_bad_overrides_name_the_key_or_value(key, text, message):
  with pytest.raises(cli.UsageError) as e:
    cli.apply_overrides(_config(), [(key, text)])
  assert message in str(e.value)


def _parser():
  p = cli.ArgumentParser(prog="python -m score_jax.test")
  p.add_config()
  p.add_bool("progress", True, "bars")
  p.add_argument("--workdir")
  return p


@pytest.mark.parametrize("argv,progress", [
    ([], True), (["--progress"], True), (["--noprogress"], False), (["--progress=false"], False),
    (["--progress=False"], False), (["--progress=0"], False), (["--progress=true"], True),
    (["--noprogress=false"], True),
])
def test_boolean_flags_take_the_absl_spellings(argv, progress):
  assert _parser().parse_args(["--config", TOY, *argv]).progress is progress


def test_config_overrides_in_both_spellings_on_a_locked_config(monkeypatch):
  monkeypatch.chdir(ROOT)
  args = _parser().parse_args(["--config", TOY, "--workdir=w", "--config.training.n_iters=7",
                               "--config.model.features", "(16,)", "--config.training.sde", "vesde"])
  assert (args.workdir, args.config.training.n_iters, args.config.model.features) == ("w", 7, (16,))
  assert args.config.training.sde == "vesde" and args.config_path == TOY
  with pytest.raises(AttributeError):
    args.config.training.not_a_field = 1  # locked, as config_flags(lock_config=True) left it


def test_convert_takes_config_overrides():
  from score_jax import convert

  args = convert.parser().parse_args(["--from", "score_sde", "--config", str(ROOT / IMAGE), "--config.model.nf=64",
                                      "src", "dst"])
  assert (args.config.model.nf, args.src, args.dst, args.ema) == (64, "src", "dst", True)


def test_usage_errors_are_one_line_and_exit_2(capsys):
  with pytest.raises(SystemExit) as e:
    _parser().parse_args(["--config", str(ROOT / TOY), "--config.training.n_iter=3"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("score_jax: error: --config.training.n_iter is not a config field")
  assert "--help" in err


@pytest.mark.parametrize("errno_name,expected", [("ENOSPC", "the disk is full"), ("EROFS", "read-only"),
                                                  ("EDQUOT", "quota")])
def test_disk_errors_say_so_and_name_the_path(errno_name, expected):
  import errno

  message = cli.expected_message(OSError(getattr(errno, errno_name), os.strerror(getattr(errno, errno_name)),
                                         "/runs/x/checkpoint"))
  assert expected in message and "/runs/x/checkpoint" in message


def test_corrupt_checkpoints_are_expected_errors():
  from score_jax import checkpoints

  assert cli.expected_message(checkpoints.CheckpointCorruptError("step 4 is truncated")) == "step 4 is truncated"
  assert cli.expected_message(RuntimeError("a bug")) is None
  assert cli.expected_message(KeyError("ours")) is None  # a KeyError of our code is a bug
  with pytest.raises(KeyError) as info:
    _config()["no_such_section"]
  assert "no_such_section" in cli.expected_message(info.value)  # a config lookup's


# ---- the commands of the docs still parse -------------------------------------------------------------------


def _documented_commands():
  """Each ``python -m score_jax.X ...`` in a fenced block of README.md and docs/*.md, continuations joined."""
  commands = []
  for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", md.read_text(), flags=re.S | re.M)
    for block in blocks:
      for line in block.replace("\\\n", " ").splitlines():
        match = re.search(r"python -m score_jax\.(\w+)(.*)", line)
        if match and "..." not in line and '"' not in match.group(2):
          rest = match.group(2).split(" #")[0]
          commands.append(pytest.param(match.group(1), shlex.split(rest), id=f"{md.name}: {line.strip()[:80]}"))
  return commands


@pytest.mark.parametrize("module,argv", _documented_commands())
def test_documented_commands_parse(module, argv, monkeypatch):
  monkeypatch.chdir(ROOT)
  args = importlib.import_module(f"score_jax.{COMMAND_MODULE.get(module, module)}").parser().parse_args(argv)
  assert args is not None


def test_the_docs_have_commands_of_every_entry_point():
  documented = {p.values[0] for p in _documented_commands()}
  assert documented == set(ENTRY_POINTS), documented


_NO_JAX_PROBE = """
import sys
from score_jax import main
try:
  main.main(["--config", "configs/toy/gmm2d.py", "--workdir", "w", "--config.training.n_iter=3"])
except SystemExit as e:
  print(e.code, "jax" in sys.modules)
"""


def test_the_launcher_rejects_a_bad_command_line_before_importing_jax():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _NO_JAX_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
  assert out.stdout.split() == ["2", "False"], out.stderr[-2000:]
