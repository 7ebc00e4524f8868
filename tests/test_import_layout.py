"""The config depends on the environment registry and the interventions, never the reverse: no
module of envs/, interventions/ or nets/ imports the config at run time (annotations only, under
TYPE_CHECKING), so there is no config <-> envs <-> interventions import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "plasticity_lab"


def runtime_imports(path: Path) -> set[str]:
    """Modules a file imports outside ``if TYPE_CHECKING:`` blocks (function bodies included)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            skip.update(id(child) for sub in node.body for child in ast.walk(sub))
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("package", ["envs", "interventions", "nets"])
def test_package_never_imports_the_config(package):
    for path in sorted((SRC / package).glob("*.py")):
        assert "plasticity_lab.config" not in runtime_imports(path), path.name


def test_config_imports_envs_and_interventions_at_the_top():
    tree = ast.parse((SRC / "config.py").read_text())
    top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert {"plasticity_lab.envs.registry", "plasticity_lab.interventions"} <= top
    nested = runtime_imports(SRC / "config.py") - top
    assert not {m for m in nested if m.startswith("plasticity_lab")}  # no lazy imports left
