"""The one command-line framework of the ``python -m score_jax.*`` entry points.

Every entry point builds an :class:`ArgumentParser` and hands its work to :func:`run`::

  def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m score_jax.thing", description=...)
    p.add_config()                       # --config PATH and any number of --config.section.field=value
    p.add_bool("progress", True, "Show progress bars.")   # --progress, --noprogress, --progress=false
    return p

  def main(argv=None) -> int:
    return cli.run(_main, argv, parser=parser())   # _main(args) -> exit code or None

The convention (docs/training.md):

- A usage error (an unknown flag, a bad flag value, a config key that does not exist, an override of the
  wrong type, a config file that is missing or does not load) prints one line
  ``score_jax: error: <what>, <what to do>`` and exits 2, before any heavy import or JAX computation.
- An expected error while running (:data:`EXPECTED`: bad config values, missing or unreadable files, a
  workdir that is a file, a full or read-only disk, a corrupt or mismatched checkpoint, a NaN loss) prints
  one line ``score_jax: error: <message>`` and exits 1; ``--traceback`` shows where it was raised.
- Any other exception is a bug and keeps its traceback.

Flags are absl-compatible (``--flag value``, ``--flag=value``; booleans as ``--flag``, ``--noflag`` and
``--flag=false``), so commands written for the former absl launcher keep working. Nothing here defines
global flags, so two entry points can be imported (and called) in one process.

This module imports only the standard library, ml_collections and the small score_jax modules it
needs, so that the cheap checks run before JAX is imported.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import errno
import os
import sys
from typing import Any, Callable, Iterable, Sequence

import ml_collections

from score_jax import compile_cache, configs_loader, errors, logs, xla_cpu

__all__ = ["PROG", "EXPECTED", "ArgumentParser", "UsageError", "parse_bool", "parse_value", "apply_overrides",
           "config_keys", "load_config", "check_output_dir", "expected_message", "run"]

PROG = "score_jax"  # every error line starts "score_jax: error:"
TRUE, FALSE = ("true", "1", "yes", "t", "y"), ("false", "0", "no", "f", "n")
# Errors of the input or of the environment, not of the code: one line, no traceback.
EXPECTED = (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
            PermissionError, FloatingPointError, errors.UserError)
_DISK_ERRNOS = {  # errno: (what happened, what to do)
    errno.ENOSPC: ("the disk is full", "free space or write elsewhere"),
    errno.EROFS: ("the file system is read-only", "choose a writable path"),
    errno.EDQUOT: ("the disk quota is exceeded", "free space or write elsewhere"),
}


class UsageError(ValueError):
  """A bad command line: :class:`ArgumentParser` prints it as one line and exits 2."""


def _one_line(text: str) -> str:
  return " ".join(str(text).split())


def parse_bool(text: str, name: str) -> bool:
  """absl's spellings of a boolean: true/false, True/False, 1/0 (also yes/no)."""
  value = text.strip().lower()
  if value in TRUE:
    return True
  if value in FALSE:
    return False
  raise UsageError(f"{name}={text!r} is not a boolean, give true or false")


def parse_value(text: str, current: Any, key: str) -> Any:
  """``text`` (from ``--config.<key>=<text>``) as a value of the type of the field's ``current`` value.

  bool: true/false/1/0; int: an integer; float: any number (an integer is fine); str: as given; tuple:
  a Python tuple such as ``(1,2)``, ``(16,)`` or ``()`` (``16`` alone is the 1-tuple). A field that is None
  takes a Python literal, or the text as a string.
  """
  flag = f"--config.{key}"
  if isinstance(current, bool):
    return parse_bool(text, flag)
  if isinstance(current, int):
    try:
      return int(text.strip())
    except ValueError:
      raise UsageError(f"{flag}={text!r} is not an integer ({key} is an int, e.g. {current})") from None
  if isinstance(current, float):
    try:
      return float(text.strip())
    except ValueError:
      raise UsageError(f"{flag}={text!r} is not a number ({key} is a float, e.g. {current})") from None
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text.strip()) if text.strip() else ()
    except (ValueError, SyntaxError):
      raise UsageError(f"{flag}={text!r} is not a tuple ({key} is a tuple, e.g. {tuple(current)!r}; quote "
                       "strings inside it)") from None
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return type(current)(value)
  if current is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  raise UsageError(f"{flag}: fields of type {type(current).__name__} cannot be set from the command line")


def config_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf key of ``config`` as ``section.field``."""
  keys = []
  for name, value in config.items():
    key = f"{prefix}{name}"
    if isinstance(value, ml_collections.ConfigDict):
      keys += config_keys(value, key + ".")
    else:
      keys.append(key)
  return keys


def _unknown_key(key: str, config: ml_collections.ConfigDict) -> UsageError:
  keys = config_keys(config)
  close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
  field = key.rsplit(".", 1)[-1]  # the field may be right and the section wrong, or the other way round
  close += [k for k in keys if k not in close and difflib.get_close_matches(field, [k.rsplit(".", 1)[-1]], cutoff=0.75)]
  close = [f"--config.{k}" for k in close[:3]]
  hint = f"did you mean {' or '.join(close)}?" if close else "see the config file for its fields"
  return UsageError(f"--config.{key} is not a config field; {hint}")


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[tuple[str, str]]) -> None:
  """Sets each ``(key, text)`` of ``--config.<key>=<text>`` on ``config``, as the field's type.

  Raises:
    UsageError: naming the key for a field that does not exist (with the closest existing keys), or the
      value for one of the wrong type.
  """
  for key, text in overrides:
    *path, field = key.split(".")
    node = config
    for part in path:
      child = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
      if not isinstance(child, ml_collections.ConfigDict):
        raise _unknown_key(key, config)
      node = child
    if field not in node:
      raise _unknown_key(key, config)
    value = parse_value(text, node[field], key)
    try:
      node[field] = value  # an existing field: allowed on a locked config too
    except TypeError as e:
      raise UsageError(f"--config.{key}={text!r}: {_one_line(e)}") from None


def load_config(path: str) -> ml_collections.ConfigDict:
  """:func:`score_jax.configs_loader.load_config`, with every way the file can fail as a :class:`UsageError`."""
  if not path:
    raise UsageError("--config is empty, give the path of a config file such as configs/toy/gmm2d.py")
  if os.path.isdir(path):
    raise UsageError(f"--config {path} is a directory, give a config file such as configs/toy/gmm2d.py")
  try:
    config = configs_loader.load_config(path)
  except FileNotFoundError:
    raise UsageError(f"--config {path}: no such file (working directory {os.getcwd()}), check the path") from None
  except PermissionError as e:
    raise UsageError(f"--config {path} cannot be read ({e.strerror}), check its permissions") from None
  except SyntaxError as e:
    where = f"{e.filename or path}:{e.lineno}" if e.lineno else path
    raise UsageError(f"--config {where}: syntax error ({e.msg}), fix the config file") from None
  except ImportError as e:
    raise UsageError(f"--config {path}: {_one_line(e)}, check the imports of the config file") from None
  except AttributeError as e:
    raise UsageError(f"{_one_line(e)} A config file defines get_config() returning an ml_collections "
                     "ConfigDict.") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UsageError(f"--config {path}: get_config() returned a {type(config).__name__}, not a ConfigDict")
  return config


class _BoolAction(argparse.Action):
  """``--name`` sets True, ``--noname`` (and any extra false spellings) False."""

  def __init__(self, option_strings, dest, true_strings=(), **kwargs):
    self.true_strings = tuple(true_strings)
    super().__init__(option_strings, dest, nargs=0, **kwargs)

  def __call__(self, parser, namespace, values, option_string=None):
    setattr(namespace, self.dest, option_string in self.true_strings)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with one-line usage errors, absl-style booleans, ``--config`` overrides, ``--traceback`` and
  ``--verbose``."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("allow_abbrev", False)  # as absl: a flag is spelled out
    kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
    common = kwargs.pop("common_flags", True)
    self._flags: set[str] = set()  # every option string, for "did you mean" (argparse adds --help in __init__)
    super().__init__(*args, **kwargs)
    self._bools: dict[str, str] = {}  # '--name' -> '--noname'
    self._config_flag = False
    self._has_subcommands = False
    if common:
      self.add_argument("--helpshort", "--helpfull", action="help", help=argparse.SUPPRESS)  # absl's spellings
      self._flags -= {"--helpshort", "--helpfull"}  # never suggested
      self.add_bool("traceback", False, "Show the Python traceback of an expected error (bad input, missing files).")
      self.add_bool("verbose", False, "Also show the INFO logs of absl, orbax and JAX.")

  # ---- definitions

  def add_argument(self, *args, **kwargs):
    action = super().add_argument(*args, **kwargs)
    self._flags.update(action.option_strings)
    return action

  def add_bool(self, name: str, default: bool, help: str, false_aliases: Sequence[str] = ()) -> None:
    """A boolean flag: ``--name``, ``--noname``, ``--name=true/false/1/0`` (and ``false_aliases``)."""
    true, false = f"--{name}", f"--no{name}"
    self._bools[true] = false
    self.add_argument(true, false, *false_aliases, dest=name, action=_BoolAction, true_strings=(true,),
                      default=default, help=f"{help} (default: {default}; --no{name} / --{name}=false to turn off)"
                      if default else f"{help} (default: False)")

  def add_config(self, required: bool = True, help: str = "an ml-collections config file, e.g. "
                 "configs/toy/gmm2d.py") -> None:
    """``--config PATH`` (loaded into ``args.config``) and ``--config.section.field=value`` overrides."""
    self._config_flag = True
    self.add_argument("--config", required=required, metavar="PATH",
                      help=f"{help}; any field is then set with --config.section.field=value")

  def add_subparsers(self, **kwargs):
    """Subcommands; make the top-level parser with ``common_flags=False`` so that each subcommand has them."""
    if "--traceback" in self._flags:
      raise TypeError("a parser with subcommands is made with common_flags=False (the subcommands take them)")
    self._has_subcommands = True
    kwargs.setdefault("parser_class", _SubParser)
    return super().add_subparsers(**kwargs)

  # ---- parsing

  def error(self, message: str):
    """One line on stderr, exit 2 (argparse's code for a usage error)."""
    message = _one_line(message)
    if "--help" not in message:
      message += f"; {self.prog} --help lists the flags"
    self.exit(2, f"{PROG}: error: {message}\n")

  def _split(self, argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Takes ``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) out of ``argv``, and rewrites
    ``--flag=BOOL`` of the boolean flags to ``--flag`` / ``--noflag``."""
    rest, overrides = [], []
    i = 0
    while i < len(argv):
      arg = argv[i]
      if arg == "--":
        rest += argv[i:]
        break
      name, eq, value = arg.partition("=")
      if self._config_flag and name.startswith("--config."):
        key = name[len("--config."):]
        if not eq:
          if i + 1 >= len(argv):
            self.error(f"{name} needs a value, give {name}=VALUE")
          value = argv[i + 1]
          i += 1
        overrides.append((key, value))
      elif eq and (name in self._bools or name in self._bools.values()):
        try:
          on = parse_bool(value, name)
        except UsageError as e:
          self.error(str(e))
        rest.append(name if on else self._opposite(name))  # --noflag=false is --flag
      else:
        rest.append(arg)
      i += 1
    return rest, overrides

  def _opposite(self, name: str) -> str:
    if name in self._bools:
      return self._bools[name]
    return next(true for true, false in self._bools.items() if false == name)

  def parse_known_args(self, args=None, namespace=None):
    argv = list(sys.argv[1:] if args is None else args)
    argv, overrides = self._split(argv)
    if not self._has_subcommands:  # an unknown flag first: a typo'd required flag would read as a missing one
      self._check_flags(argv)
    namespace, extras = super().parse_known_args(argv, namespace)
    if self._config_flag:
      path = getattr(namespace, "config", None)
      if overrides and not path:
        self.error(f"--config.{overrides[0][0]} needs --config PATH, give the config file")
      if path:
        try:
          config = load_config(path)
          apply_overrides(config, overrides)
        except UsageError as e:
          self.error(str(e))
        config.lock()  # as config_flags(lock_config=True): a typo in the code fails too
        namespace.config_path = path
        namespace.config = config
    return namespace, extras

  def _check_flags(self, argv: list[str]) -> None:
    for arg in argv:
      if arg == "--":
        return
      name = arg.partition("=")[0]
      if name.startswith("--") and name not in self._flags:
        close = difflib.get_close_matches(name, list(self._flags), n=2)
        hint = (f"did you mean {' or '.join(close)}?" if close else
                "config fields are set as --config.section.field=value")
        self.error(f"unrecognized argument {arg}; {hint}")

  def parse_args(self, args=None, namespace=None):
    namespace, extras = self.parse_known_args(args, namespace)
    if extras:
      flag = next((a.partition("=")[0] for a in extras if a.startswith("-")), None)
      close = difflib.get_close_matches(flag, list(self._flags), n=2) if flag else []
      if close:
        hint = f"did you mean {' or '.join(close)}?"
      elif flag:
        hint = "config fields are set as --config.section.field=value"
      else:
        hint = "this command takes no such argument"
      self.error(f"unrecognized arguments: {' '.join(extras)}; {hint}")
    return namespace


class _SubParser(ArgumentParser):
  """A subcommand's parser: the one that takes --traceback / --verbose when the top-level parser was made with
  ``common_flags=False`` (argparse would let a subcommand's defaults overwrite the top level's values)."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault("common_flags", True)
    super().__init__(*args, **kwargs)


def check_output_dir(path: str | os.PathLike, flag: str = "--workdir") -> None:
  """Fails early, with a one-line error, for an output directory that cannot be one: a file, a path under
  a file, or on a read-only file system (permission bits do not stop root, a read-only mount does).

  Creates nothing. Raises NotADirectoryError, or OSError(EROFS) / PermissionError naming the path.
  """
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(errno.ENOTDIR, f"{flag} {path} is a file, not a directory; choose another {flag}",
                             path)
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise NotADirectoryError(errno.ENOTDIR, f"{flag} {path}: {existing} is a file, not a directory; choose "
                             f"another {flag}", existing)
  if os.statvfs(existing).f_flag & os.ST_RDONLY:
    raise OSError(errno.EROFS, f"{flag} {path} is on a read-only file system", existing)
  if not os.access(existing, os.W_OK):
    raise PermissionError(errno.EACCES, f"{flag} {path}: {existing} is not writable; choose another {flag}",
                          existing)


# ---- running ------------------------------------------------------------------------------------------------


def _filename(e: OSError) -> str:
  names = [n for n in (e.filename, getattr(e, "filename2", None)) if n]
  return " -> ".join(map(str, names))


def _raised_by_config(e: BaseException) -> bool:
  """Whether ``e`` was raised inside ml_collections (a config lookup of a field that does not exist)."""
  tb = e.__traceback__
  while tb is not None and tb.tb_next is not None:
    tb = tb.tb_next
  return tb is not None and "ml_collections" in tb.tb_frame.f_code.co_filename


def expected_message(e: BaseException) -> str | None:
  """The one-line message of an expected error, or None if ``e`` is a bug (keep its traceback)."""
  if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
    what, remedy = _DISK_ERRNOS[e.errno]
    where = _filename(e)
    return _one_line(f"{what}{f' at {where}' if where else ''} ({e.strerror}); {remedy} (the --workdir or output "
                     "path)")
  if isinstance(e, NotADirectoryError):
    if e.strerror and "choose another" in e.strerror:  # from check_output_dir
      return _one_line(e.strerror)
    return _one_line(f"{_filename(e) or e}: a path component is a file, not a directory; choose another path")
  if isinstance(e, IsADirectoryError):
    return _one_line(f"{_filename(e) or e} is a directory, expected a file; choose a file path")
  if isinstance(e, PermissionError):
    if e.strerror and "choose another" in e.strerror:
      return _one_line(e.strerror)
    return _one_line(f"{_filename(e) or e}: permission denied; choose a path you can write / read")
  if isinstance(e, KeyError):
    if not _raised_by_config(e):
      return None  # a KeyError of our own code is a bug
    return _one_line(e.args[0] if len(e.args) == 1 else e)  # str(KeyError) would quote its message
  if isinstance(e, EXPECTED):
    return _one_line(f"{e}" or type(e).__name__)
  return None


def run(main_fn: Callable[[argparse.Namespace], int | None], argv: Sequence[str] | None = None, *,
        parser: ArgumentParser) -> int:
  """Parse ``argv`` with ``parser`` and run ``main_fn(args)``; returns the exit code.

  Before anything else, the CPU default of :mod:`score_jax.xla_cpu` is applied (JAX reads ``XLA_FLAGS``
  when it creates its backend, which no entry point does before this); after parsing, the log levels
  (:func:`score_jax.logs.configure`, ``--verbose``) and the persistent compilation cache
  (:func:`score_jax.compile_cache.enable`). Usage errors exit 2 (SystemExit
  from the parser; a :class:`UsageError` raised by ``main_fn`` returns 2); expected errors
  (:func:`expected_message`) print one ``score_jax: error:`` line and return 1, or propagate with
  ``--traceback``; anything else propagates with its traceback.
  """
  xla_cpu.apply()
  args = parser.parse_args(argv)
  logs.configure(verbose=bool(getattr(args, "verbose", False)))
  compile_cache.enable()  # a relaunch loads its programs instead of compiling them (imports JAX)
  try:
    code = main_fn(args)
  except UsageError as e:  # found by main_fn before any work (e.g. an output that exists): as a parse error
    if getattr(args, "traceback", False):
      raise
    print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr, flush=True)
    return 2
  except Exception as e:  # noqa: BLE001 -- sorted by expected_message; the rest is re-raised
    message = expected_message(e)
    if message is None or getattr(args, "traceback", False):
      raise
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 1
  return 0 if code is None else int(code)
