"""Loading config files by path from any working directory.

The image configs import their shared defaults the way the original does
(``from configs.default_cifar10_configs import get_default_configs``). A config file is loaded by path
with importlib, so that import only resolves if the directory that holds the ``configs`` package is on
``sys.path``. ``python -m score_jax.main`` run from the repository root puts the root there (the working
directory), but a run from any other directory does not. :func:`load_config` (which every command's
``--config`` goes through, score_jax/cli.py) therefore calls :func:`make_importable` first.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from typing import Sequence

import ml_collections

__all__ = [
    "CONFIG_PACKAGE", "config_import_root", "make_importable", "make_importable_from_argv", "load_config",
]

CONFIG_PACKAGE = "configs"  # the package name the configs' own imports use
_CHECKOUT_ROOT = pathlib.Path(__file__).resolve().parents[1]  # holds score_jax/ and, in a checkout, configs/


def _is_config_package(path: pathlib.Path) -> bool:
  return path.name == CONFIG_PACKAGE and (path / "__init__.py").is_file()


def config_import_root(config_path: str | pathlib.Path) -> pathlib.Path | None:
  """The directory to put on ``sys.path`` so that ``import configs`` finds the package holding the file.

  Args:
    config_path: a config file, e.g. ``configs/ve/cifar10_ncsnpp_continuous.py``, relative to the working
      directory or absolute. A ``path:argument`` suffix (config_flags syntax) is ignored.

  Returns:
    The parent of the nearest enclosing ``configs`` package directory; for a file outside any such package
    (a user's own config importing the shared defaults), the score_jax checkout if it has ``configs/``;
    otherwise None.
  """
  path = pathlib.Path(str(config_path).split(":", 1)[0]).resolve()
  for parent in path.parents:
    if _is_config_package(parent):
      return parent.parent
  if _is_config_package(_CHECKOUT_ROOT / CONFIG_PACKAGE):
    return _CHECKOUT_ROOT
  return None


def make_importable(config_path: str | pathlib.Path) -> None:
  """Puts :func:`config_import_root` of ``config_path`` first on ``sys.path`` (once)."""
  root = config_import_root(config_path)
  if root is not None and str(root) not in sys.path:
    sys.path.insert(0, str(root))


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  for i, arg in enumerate(argv):
    for prefix in (f"--{name}", f"-{name}"):
      if arg == prefix and i + 1 < len(argv):
        return argv[i + 1]
      if arg.startswith(prefix + "="):
        return arg[len(prefix) + 1:]
  return None


def make_importable_from_argv(argv: Sequence[str], flag_name: str = "config") -> None:
  """:func:`make_importable` for the file named by ``--<flag_name>`` in ``argv``, if any."""
  value = _flag_value(argv, flag_name)
  if value:
    make_importable(value)


def load_config(config_path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """``get_config()`` of the file at ``config_path``, as ``--config <config_path>`` would load it.

  Raises:
    FileNotFoundError: if there is no such file.
    AttributeError: if the file has no ``get_config``.
  """
  path = pathlib.Path(config_path)
  if not path.is_file():
    raise FileNotFoundError(f"Config file {str(path)!r} not found (working directory {pathlib.Path.cwd()}).")
  make_importable(path)
  # A fresh module per load, as config_flags does, so that two files never share module state.
  spec = importlib.util.spec_from_file_location(f"_score_jax_config_{abs(hash(str(path.resolve())))}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"Config file {str(path)!r} defines no get_config().")
  return module.get_config()
