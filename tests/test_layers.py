"""The toolkit's import layering, read from the source, so a wrong-way import fails here instead of
as a circular-import error in whichever entry point first loads the modules in an unlucky order.

The rules (``TYPE_CHECKING`` blocks are annotations, never executed, so they never count):

1. No import cycles among ``plasticity_lab`` modules, counting the imports that run when a module
   is loaded (its body, class bodies, ``if``/``try`` blocks; not function bodies). Importing
   ``a.b.c`` also runs the packages ``a.b`` and ``a``, so those count too unless the importer is
   inside them (they are then already loading).
2. The lower layers never import the upper ones, function bodies included: no module of nets/,
   metrics/, envs/ or interventions/ imports anything of agents/ or experiment/; nets/, envs/
   and interventions/ do not import the config either (it validates them, so it imports them);
   distributions.py imports nothing of the toolkit.
3. The config imports the environment registry and the interventions at its top, and nothing of
   the toolkit inside functions (a lazy import there could hide a cycle from rule 1).

The source read is the one Python imports (``PYTHONPATH`` decides), so the rules can be checked
against another tree.
"""

from __future__ import annotations

import ast
import graphlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(importlib.util.find_spec("plasticity_lab").origin).parent
PACKAGE = SRC.name

UPPER = ("agents", "experiment")
FORBIDDEN = {
    "nets": (*UPPER, "config"),
    "envs": (*UPPER, "config"),
    "interventions": (*UPPER, "config"),
    "metrics": UPPER,
    "distributions": ("",),  # nothing of the toolkit
}
"""Layer (a package or module of plasticity_lab) -> what it must not import (prefixes)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def import_nodes(tree: ast.Module, in_functions: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements outside ``if TYPE_CHECKING:`` blocks, function bodies only if asked."""

    def visit(nodes: Iterator[ast.AST]) -> Iterator[ast.Import | ast.ImportFrom]:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                yield node
            elif isinstance(node, ast.If) and "TYPE_CHECKING" in (getattr(node.test, n, None) for n in ("id", "attr")):
                yield from visit(iter(node.orelse))
            elif in_functions or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                yield from visit(ast.iter_child_nodes(node))

    return visit(iter(tree.body))


def imported_modules(name: str, in_functions: bool) -> set[str]:
    """The toolkit modules that module ``name`` imports (``from m import x``: m.x if a module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in import_nodes(ast.parse(path.read_text()), in_functions):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: level - 1 packages up from this one
                base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0], base]))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the toolkit modules its loading runs (rule 1)."""
    graph = {}
    for name in MODULES:
        edges = set()
        for target in imported_modules(name, in_functions=False):
            parts = target.split(".")
            packages = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
            edges |= {p for p in packages if p != name and not name.startswith(p + ".")}
        graph[name] = edges
    return graph


def test_no_import_cycles():
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as err:
        # graphlib lists each module before the ones that import it
        pytest.fail(f"import cycle (a -> b: a imports b): {' -> '.join(reversed(err.args[1]))}")


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_never_import_upper_ones(layer):
    root = f"{PACKAGE}.{layer}"
    banned = tuple(".".join(filter(None, [PACKAGE, prefix])) for prefix in FORBIDDEN[layer])
    modules = [name for name in MODULES if name == root or name.startswith(root + ".")]
    assert modules, f"no module {root}: the rule would hold vacuously"
    wrong = [
        f"{name} imports {target}"
        for name in modules
        for target in sorted(imported_modules(name, in_functions=True))
        if any(target == b or target.startswith(b + ".") for b in banned)
    ]
    assert not wrong, "; ".join(wrong)


def test_config_imports_envs_and_interventions_at_the_top():
    config = f"{PACKAGE}.config"
    top = imported_modules(config, in_functions=False)
    assert {f"{PACKAGE}.envs.registry", f"{PACKAGE}.interventions"} <= top
    assert not imported_modules(config, in_functions=True) - top  # no lazy imports
