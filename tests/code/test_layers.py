"""The house's layering, read from the source: every project import points down, and none hides.

Layers, lowest first: the shared basics (errors, io, config, summary, timings, progress) < data < models <
evaluation < llm < serving < stages < orchestration < cli. A module imports its own layer or lower ones. An
import inside a function body is an arrow a reader (and dvc.yaml's deps) cannot see at the top of the
file, so each one left must be in `LAZY` with the reason it has to wait. A module named by a string
(an `importlib` registry) is an arrow no one sees at all.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = [("errors", "io", "config", "summary", "timings", "progress"), ("data",), ("models",), ("evaluation",),
          ("llm",), ("serving",), ("stages",), ("orchestration",), ("cli",)]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

#: (importing file, imported module) -> why it waits for the function that needs it
LAZY = {
    ("components/serving/scorer.py", "components.serving.packaged"):
        "torch and the LLM code: the public service's processes import the scorer module without needing them",
    ("components/serving/service.py", "components.llm.backbone"): "torch: only the scorer's model thread needs it",
    ("components/stages/package.py", "components.llm.backbone"): "torch: only a packaged backbone needs it",
}


def modules() -> dict[str, Path]:
    """Every module of components/ by dotted name (a package by its own name)."""
    out = {}
    for path in sorted((ROOT / "components").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def layer(module: str) -> int:
    parts = module.split(".")
    return RANK[parts[1]] if len(parts) > 1 else 0


def project_imports(path: Path):
    """(imported module, line, inside a function body) of every `components` import in the file."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module, child.lineno, in_function))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text()), False)
    return [f for f in found if f[0] == "components" or f[0].startswith("components.")]


def test_every_package_of_components_has_a_layer():
    packages = {m.split(".")[1] for m in modules() if "." in m}
    assert packages <= set(RANK), f"place {sorted(packages - set(RANK))} in LAYERS"


def test_no_module_imports_a_higher_layer():
    upward = [f"{path.relative_to(ROOT)}:{line} imports {target}"
              for name, path in modules().items() for target, line, _ in project_imports(path)
              if layer(target) > layer(name)]
    assert not upward, "upward arrows:\n" + "\n".join(upward)


def test_project_imports_sit_at_the_top_of_the_module():
    hidden = {(str(path.relative_to(ROOT)), target): line for path in modules().values()
              for target, line, in_function in project_imports(path) if in_function}
    unexplained = [f"{file}:{line} imports {target}" for (file, target), line in hidden.items()
                   if (file, target) not in LAZY]
    assert not unexplained, ("imports inside a function body (move them to the top, or say in LAZY why they "
                             "must wait):\n" + "\n".join(unexplained))
    assert set(LAZY) <= set(hidden), f"LAZY lists imports that are now at the top: {sorted(set(LAZY) - set(hidden))}"


def test_no_module_is_imported_by_its_name_in_a_string():
    """A registry of module names (`importlib.import_module("components....")`) hides its arrows."""
    names = set(modules())
    named = [f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}" for path in modules().values()
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and re.fullmatch(r"components(\.\w+)+", node.value) and node.value in names
             and not modules()[node.value].name == "__init__.py"]
    assert not named, "modules named in strings (import them instead):\n" + "\n".join(named)
