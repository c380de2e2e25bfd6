"""The package's shape, read from the source with ``ast``: no import cycles, no use of another module's private
names, no module over 700 lines, and ``import score_jax`` changes no environment variable."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "score_jax"
MAX_LINES = 700


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
  return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
  """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
  if not node.level:
    return node.module or ""
  base = module.split(".") if _is_package(module) else module.split(".")[:-1]
  base = base[:len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def _is_main_block(node: ast.AST) -> bool:
  """``if __name__ == "__main__":``: runs only when the file is the script (module ``__main__``, another module
  object than the imported one), so what it imports is no dependency of the module."""
  return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
          and node.test.left.id == "__name__" and any(isinstance(c, ast.Constant) and c.value == "__main__"
                                                      for c in node.test.comparators))


def _walk_imported_code(tree: ast.AST):
  """``ast.walk`` without the ``if __name__ == "__main__":`` blocks."""
  todo = [tree]
  while todo:
    node = todo.pop()
    yield node
    todo.extend(child for child in ast.iter_child_nodes(node) if not _is_main_block(child))


def _imports(module: str) -> tuple[set[str], dict[str, str], list[tuple[int, str]]]:
  """``(imported score_jax modules, local alias -> module, private names imported from other modules)``."""
  tree = ast.parse(MODULES[module].read_text())
  edges: set[str] = set()
  aliases: dict[str, str] = {}
  private: list[tuple[int, str]] = []
  for node in _walk_imported_code(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.name.split(".")[0] == "score_jax":
          target = a.name
          edges.add(target)
          aliases[a.asname or a.name.split(".")[0]] = target if a.asname else "score_jax"
    elif isinstance(node, ast.ImportFrom):
      source = _resolve(module, node)
      if source.split(".")[0] != "score_jax":
        continue
      for a in node.names:
        full = f"{source}.{a.name}"
        if full in MODULES:  # ``from score_jax import train``: a module
          edges.add(full)
          aliases[a.asname or a.name] = full
        else:  # a name defined in ``source``
          edges.add(source)
          if a.name.startswith("_") and not a.name.startswith("__") and source != module:
            private.append((node.lineno, f"from {source} import {a.name}"))
  return edges, aliases, private


def _graph() -> dict[str, set[str]]:
  graph = {}
  for name in MODULES:
    edges, _, _ = _imports(name)
    # importing a submodule imports its packages first; that is not a dependency of the importer on them
    graph[name] = {e for e in edges if e in MODULES and e != name and not (_is_package(e) and name.startswith(e))}
  return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  found: list[list[str]] = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_no_import_cycle_among_score_jax_modules():
  cycles = _cycles(_graph())
  assert not cycles, f"import cycles (lazy imports included): {cycles}"


def test_the_cycle_finder_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_uses_another_modules_private_names(module):
  _, aliases, private = _imports(module)
  tree = ast.parse(MODULES[module].read_text())
  for node in ast.walk(tree):
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
        and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != module):
      private.append((node.lineno, f"{node.value.id}.{node.attr}"))
  assert not private, f"{module} uses private names of other modules: {sorted(private)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_700_lines(module):
  lines = len(MODULES[module].read_text().splitlines())
  assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines (at most {MAX_LINES}): split it"


def test_import_score_jax_changes_no_environment_variable():
  code = ("import json, os, sys; before = dict(os.environ); import score_jax, score_jax.pipeline, score_jax.cli; "
          "after = dict(os.environ); import logging; "
          "print(json.dumps({'changed': sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)), "
          "'matplotlib': 'matplotlib' in sys.modules, 'root_level': logging.getLogger().level}))")
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS",)}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
  assert out.returncode == 0, out.stderr
  found = json.loads(out.stdout.strip().splitlines()[-1])
  assert found["changed"] == [], f"import score_jax changed {found['changed']}"
  assert not found["matplotlib"], "import score_jax imported matplotlib (and may have set its backend)"
  assert found["root_level"] == 30, "import score_jax changed the root logger's level"


def test_imports_of_a_main_block_are_no_dependency():
  tree = ast.parse("import os\nif __name__ == '__main__':\n  from score_jax import fid_weights\n")
  found = [n for n in _walk_imported_code(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
  assert [type(n).__name__ for n in found] == ["Import"]
