"""Each stage's code deps, derived from its imports: the project files `dvc.yaml` must list so that DVC
reruns a stage exactly when code it runs changes.

    python -m components.orchestration.code_deps            # print every stage's code deps as dvc.yaml lines
    python -m components.orchestration.code_deps --check    # exit 1, naming each stage whose deps differ
    python -m components.orchestration.code_deps --write    # put the derived lists into dvc.yaml

Run it from the repository root (`--dvc-yaml` names another file). tests/code/test_code_deps.py runs the
check, so a stage whose imports changed fails CI until its deps follow. `--write` replaces only the
code entries of each stage's `deps:`; data deps, comments and the other keys stay as they are.

What counts, read from the source with `ast` (nothing is imported, so the check takes well under a
second and needs neither torch nor DVC):

- the module a stage's command runs (`python -m components.stages.X` or `python path/to/file.py`), and
  every project module it imports, transitively: `import a.b`, `from a import b` (b a submodule or a
  name), relative imports, and `importlib.import_module(...)` / `__import__(...)` when the name is a
  string literal or one of the literal strings a module-level constant holds (`TABLE[name]`);
- imports inside functions and `try` blocks: a stage may call the function, so the code may run;
- every package `__init__.py` an import runs (`import a.b.c` runs a/__init__.py and a/b/__init__.py).

What does not count:

- imports under `if TYPE_CHECKING:`: they never run, so they cannot change what a stage computes;
- third-party and standard-library modules: constraints.txt pins them, and a package upgrade is a
  deliberate, separate event (rerun with `dvc repro -f`);
- a module whose only statement is its docstring (most package `__init__.py`): running it changes
  nothing, and listing it would rerun every stage when a package's description is reworded. When such a
  file gains code, it counts from then on and the check asks for it.

A project module is one under a top-level package of the repository (a folder with `__init__.py`:
`components`). A dep is code when it lies under such a package or ends in `.py`. Code deps must be
exactly the derived files:

- a folder is refused: DVC hashes every file in it, `__pycache__/*.pyc` included, and Python rewrites
  those whenever a source's mtime changes (a checkout), so a folder dep reruns its stage with no code
  changed; and a file later added to the folder would rerun it too;
- a path that does not exist is refused: `dvc repro` deletes the stage's outputs and then stops with
  `No such file or directory` (DVC 3.67);
- an import the analysis cannot follow (a name computed at run time) is reported, not guessed.
"""

from __future__ import annotations

import argparse
import ast
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from components.errors import ConfigError, stage_main

IMPORTERS = {"import_module", "__import__"}  # importlib.import_module(name) and the builtin __import__(name)


@dataclass
class _Module:
    """One parsed project file: what it imports and whether running it can do anything."""

    runs_code: bool  # has a statement besides its docstring
    imports: list[tuple[str, tuple[str, ...], int]] = field(default_factory=list)  # (module, names, line)
    unfollowed: list[tuple[int, str]] = field(default_factory=list)  # (line, why) of imports it cannot resolve
    star: tuple[str, ...] = ()  # its literal `__all__`: what `from <it> import *` takes


@dataclass(frozen=True)
class Unfollowed:
    """An import the analysis cannot turn into files: `where` is `path:line`."""

    where: str
    problem: str


@dataclass(frozen=True)
class StageCode:
    """What a stage's command runs: `files` are repo-relative POSIX paths, its entry module first."""

    stage: str
    files: tuple[str, ...]
    unfollowed: tuple[Unfollowed, ...]


@dataclass(frozen=True)
class Drift:
    """How a stage's code deps in dvc.yaml differ from `StageCode.files`; empty lists mean they match."""

    stage: str
    expected: tuple[str, ...]
    missing: tuple[str, ...]               # imported, not named
    stale: tuple[tuple[str, str], ...]     # (named path, why it should go)
    unfollowed: tuple[Unfollowed, ...]

    def __bool__(self) -> bool:
        return bool(self.missing or self.stale or self.unfollowed)

    def message(self) -> str:
        """A few lines naming the stage, each wrong path, and the deps lines that fix it."""
        lines = [f"dvc.yaml: stage '{self.stage}': its code deps are not what its command imports."]
        if self.missing:
            lines += ["  imported but not in its deps:"] + [f"    {p}" for p in self.missing]
        if self.stale:
            lines += ["  in its deps but should not be:"] + [f"    {p}: {why}" for p, why in self.stale]
        if self.unfollowed:
            lines += ["  imports that cannot be followed:"] + [f"    {u.where}: {u.problem}" for u in self.unfollowed]
            lines.append("  Fix: import those modules by a literal name (`import a.b`, `from a import b`).")
        if self.missing or self.stale:
            lines.append("  Fix: make the code entries of its deps exactly these lines (or run "
                         "`python -m components.orchestration.code_deps --write`):")
            lines += [f"      - {p}" for p in self.expected]
        return "\n".join(lines)


class Project:
    """The repository's Python source, parsed on demand (each file once)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.packages = frozenset(p.name for p in self.root.iterdir()
                                  if p.is_dir() and (p / "__init__.py").is_file())
        self._modules: dict[Path, _Module] = {}

    def is_code_path(self, dep: str) -> bool:
        """Whether a dvc.yaml dep names project code: a .py file, or a folder (or a path that does not
        exist) inside a project package. Another file inside a package is data the code reads, left alone."""
        parts = PurePosixPath(dep).parts
        inside = bool(parts) and parts[0] in self.packages and not (self.root / dep).is_file()
        return dep.endswith(".py") or inside

    def module(self, path: Path) -> _Module:
        """The parsed file at repo-relative `path`; a syntax error is a ConfigError naming it."""
        if path not in self._modules:
            self._modules[path] = self._parse(path)
        return self._modules[path]

    def files_of(self, name: str) -> tuple[list[Path], Path | None] | None:
        """The files `import name` runs (its packages' __init__.py first, its own file last), and, when
        `name` is a package, its folder; None when `name` is not a project module (third-party, standard
        library) or does not exist. A folder without __init__.py is a namespace package: it runs no file."""
        parts = name.split(".")
        if parts[0] not in self.packages:
            return None
        files: list[Path] = []
        here = Path()
        for i, part in enumerate(parts):
            here = here / part
            if (self.root / here / "__init__.py").is_file():
                files.append(here / "__init__.py")
            elif i == len(parts) - 1 and (self.root / here).with_suffix(".py").is_file():
                return [*files, here.with_suffix(".py")], None
            elif not (self.root / here).is_dir():
                return None
        return files, here

    def _parse(self, path: Path) -> _Module:
        source = (self.root / path).read_text(encoding="utf-8")
        try:
            tree = ast.parse(source, filename=str(path))
        except SyntaxError as e:
            raise ConfigError(path, f"cannot be parsed ({e.msg}, line {e.lineno})", "fix the syntax error") from None
        body = tree.body[1:] if tree.body and _is_docstring(tree.body[0]) else tree.body
        mod = _Module(runs_code=bool(body))
        consts = _string_constants(tree)
        package = ".".join(path.parent.parts)  # what a relative import starts from, for a module or an __init__
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                mod.imports += [(alias.name, (), node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node.module, node.level, package)
                if base is None:
                    mod.unfollowed.append((node.lineno, f"a relative import (level {node.level}) above the top package"))
                else:
                    mod.imports.append((base, tuple(a.name for a in node.names), node.lineno))
            elif isinstance(node, ast.Call) and _is_importer(node.func):
                names = _possible_strings(node.args[0], consts) if node.args else None
                if names is None:
                    mod.unfollowed.append((node.lineno, "imports a module whose name is computed at run time"))
                else:
                    mod.imports += [(n, (), node.lineno) for n in names]
        mod.star = consts.get("__all__", ())
        return mod


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except the bodies of `if TYPE_CHECKING:` (their `else:` runs, so it is walked)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def _is_importer(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id in IMPORTERS) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
        and isinstance(func.value, ast.Name) and func.value.id == "importlib")


def _string_constants(tree: ast.Module) -> dict[str, tuple[str, ...]]:
    """Module-level names bound once to a string or a literal collection of strings: name -> strings
    (a dict's values). A dynamic import of such a name can only import one of those."""
    found: dict[str, tuple[str, ...] | None] = {}
    for node in tree.body:
        targets, value = [], None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if isinstance(target, ast.Name):
                found[target.id] = None if target.id in found else _literal_strings(value)  # rebound: unknown
    return {k: v for k, v in found.items() if v is not None}


def _literal_strings(node: ast.expr) -> tuple[str, ...] | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    items = node.values if isinstance(node, ast.Dict) else getattr(node, "elts", None)
    if not isinstance(node, ast.Dict | ast.List | ast.Tuple | ast.Set) or items is None:
        return None
    if all(isinstance(v, ast.Constant) and isinstance(v.value, str) for v in items):
        return tuple(v.value for v in items)
    return None


def _possible_strings(node: ast.expr, consts: dict[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    """The module names an import call's argument can be, or None when they cannot be known from the source."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return (node.value,)
    if isinstance(node, ast.Subscript):  # TABLE[key]
        node = node.value
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        node = node.func.value  # TABLE.get(key)
    if isinstance(node, ast.Name) and node.id in consts:
        return consts[node.id]
    return None


def _absolute(module: str | None, level: int, package: str) -> str | None:
    """`from ..a import b` in package `x.y.z` -> `x.y.a`; None when it climbs past the top."""
    if level == 0:
        return module
    parts = package.split(".") if package else []
    if level - 1 > len(parts) - 1:
        return None
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def entry_files(project: Project, cmd: str | list[str]) -> tuple[list[Path], str | None]:
    """The files a stage's command starts by running with Python, its entry file last: for `python -m a.b`
    a/__init__.py, then a/b.py (or a/b/__init__.py and a/b/__main__.py); for `python path/x.py` that
    file. Empty when the command runs no project Python; then the second item names a project module or
    file the command runs that does not exist (a module moved without updating dvc.yaml), else None."""
    for command in [cmd] if isinstance(cmd, str) else cmd:
        words = shlex.split(str(command))
        for i, word in enumerate(words):
            if word == "-m" and i + 1 < len(words):
                found = project.files_of(words[i + 1])
                if found is None:
                    project_module = words[i + 1].split(".")[0] in project.packages
                    return [], (f"runs {words[i + 1]}, which is not a file" if project_module else None)
                files, folder = found
                main = folder / "__main__.py" if folder is not None else None
                return ([*files, main] if main is not None and (project.root / main).is_file() else files), None
            if word.endswith(".py") and i > 0 and PurePosixPath(words[i - 1]).name.startswith("python"):
                if (project.root / word).is_file():
                    return [Path(word)], None
                return [], f"runs {word}, which does not exist"
    return [], None


def stage_code(project: Project, stage: str, cmd: str | list[str]) -> StageCode:
    """The project files a stage's command runs, transitively (see the module docstring for the rules)."""
    entry, problem = entry_files(project, cmd)
    if not entry:
        return StageCode(stage, (), (Unfollowed(f"dvc.yaml: stages.{stage}.cmd", problem),) if problem else ())
    entry_file = entry[-1]
    seen: dict[Path, None] = {}
    unfollowed: list[Unfollowed] = []
    todo = list(entry)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen[path] = None
        mod = project.module(path)
        unfollowed += [Unfollowed(f"{path.as_posix()}:{line}", why) for line, why in mod.unfollowed]
        for name, names, line in mod.imports:
            found_name = project.files_of(name)
            if found_name is None:
                if name.split(".")[0] in project.packages:
                    unfollowed.append(Unfollowed(f"{path.as_posix()}:{line}", f"imports {name}, which is not a file"))
                continue
            files, folder = found_name
            todo += files
            if folder is None:
                continue
            if names == ("*",):  # `from package import *` runs the submodules its __all__ names
                init = folder / "__init__.py"
                names = project.module(init).star if (project.root / init).is_file() else ()
            for sub in names:  # `from package import submodule` runs the submodule
                found_sub = project.files_of(f"{name}.{sub}")
                if found_sub is not None:
                    todo += found_sub[0]
    files = [p for p in seen if p == entry_file or project.module(p).runs_code]
    ordered = [entry_file] + sorted((p for p in files if p != entry_file), key=lambda p: p.as_posix())
    return StageCode(stage, tuple(p.as_posix() for p in ordered), tuple(unfollowed))


def read_stages(dvc_yaml: Path) -> dict[str, dict]:
    """dvc.yaml's stages: name -> definition. Templated stages (`foreach`, `matrix`) are refused: their
    commands are only known after DVC resolves them."""
    return read_stages_text(Path(dvc_yaml).read_text(encoding="utf-8"), dvc_yaml)


def read_stages_text(text: str, dvc_yaml: Path) -> dict[str, dict]:
    """`read_stages` of dvc.yaml's text (`dvc_yaml` names it in errors)."""
    stages = (yaml.safe_load(text) or {}).get("stages") or {}
    for name, spec in stages.items():
        if not isinstance(spec, dict) or "cmd" not in spec or spec.get("wdir", ".") not in (".", "./"):
            raise ConfigError(dvc_yaml, f"stage '{name}' is not a plain stage (a `cmd`, no `foreach`, "
                              "`matrix` or `wdir`)", "list its code deps by hand and leave it out of the check")
    return stages


def dep_paths(spec: dict) -> list[str]:
    """A stage's deps as written, normalised (`./a/b.py` -> `a/b.py`); a dep may be `path` or `{path: opts}`."""
    out = []
    for dep in spec.get("deps") or []:
        path = next(iter(dep)) if isinstance(dep, dict) else str(dep)
        out.append(PurePosixPath(path).as_posix())
    return out


def drift(project: Project, name: str, spec: dict) -> Drift:
    """Compare one stage's code deps with what its command imports."""
    code = stage_code(project, name, spec["cmd"])
    expected = set(code.files)
    named = [d for d in dep_paths(spec) if project.is_code_path(d)]
    stale: list[tuple[str, str]] = []
    for dep in named:
        target = project.root / dep
        if not target.exists():
            stale.append((dep, "does not exist (dvc repro would delete the stage's outputs, then stop)"))
        elif target.is_dir():
            inside = sorted(p.relative_to(project.root).as_posix() for p in target.rglob("*.py"))
            used = sum(p in expected for p in inside)
            stale.append((dep, f"a folder (the stage imports {used} of its {len(inside)} .py files; DVC also "
                               "hashes its __pycache__): list the files"))
        elif dep not in expected:
            stale.append((dep, "the stage does not import it" if project.module(Path(dep)).runs_code
                          else "it holds only a docstring, so running it changes nothing"))
    missing = tuple(p for p in code.files if p not in named)
    return Drift(name, code.files, missing, tuple(stale), code.unfollowed)


def check(dvc_yaml: Path) -> list[Drift]:
    """Every stage of `dvc_yaml` whose code deps differ from its imports (an empty list when all match)."""
    project = Project(Path(dvc_yaml).resolve().parent)
    return [d for name, spec in read_stages(dvc_yaml).items() if (d := drift(project, name, spec))]


def rewrite(dvc_yaml: Path) -> tuple[str, list[str]]:
    """dvc.yaml's text with each stage's code deps replaced by the derived ones, and the stages changed.

    Only the lines of code entries change: the new entries go where the first old one was (after the
    data deps when there was none; a `deps:` key is added after `cmd` when the stage had none), and an
    entry kept keeps its line, so its comment. The result must parse to the same pipeline with only
    those entries changed; when it would not (a code dep written as `path: {options}`, say), a
    ConfigError says to edit by hand.
    """
    dvc_yaml = Path(dvc_yaml)
    text = dvc_yaml.read_text(encoding="utf-8")
    project = Project(dvc_yaml.resolve().parent)
    stages = read_stages(dvc_yaml)
    derived = {name: list(stage_code(project, name, spec["cmd"]).files) for name, spec in stages.items()}
    lines = text.splitlines(keepends=True)
    stages_node = _value(yaml.compose(text), "stages")
    edits: list[tuple[int, int, list[str]]] = []  # (first line, end line, new lines), in the old text
    changed = []
    for name, spec in stages.items():
        if [d for d in dep_paths(spec) if project.is_code_path(d)] == derived[name]:
            continue
        changed.append(name)
        stage_node = _value(stages_node, name)
        deps_node = _value(stage_node, "deps")
        if deps_node is None:
            keys = [k for k, _ in stage_node.value]
            at = _after_key(lines, stage_node, keys.index(next(k for k in keys if k.value == "cmd")))
            indent = " " * keys[0].start_mark.column
            edits.append((at, at, [f"{indent}deps:\n"] + [f"{indent}  - {p}\n" for p in derived[name]]))
            continue
        if not isinstance(deps_node, yaml.SequenceNode) or not deps_node.value:
            raise ConfigError(dvc_yaml, f"stage '{name}' has a `deps:` that is not a list", "make it a list")
        indent = " " * deps_node.start_mark.column
        code = [(item.start_mark.line, item.value) for item in deps_node.value
                if isinstance(item, yaml.ScalarNode) and project.is_code_path(PurePosixPath(item.value).as_posix())]
        kept = {PurePosixPath(v).as_posix(): lines[line] for line, v in code}
        new = [kept.get(p, f"{indent}- {p}\n") for p in derived[name]]
        if code:
            edits += [(line, line + 1, new if i == 0 else []) for i, (line, _) in enumerate(code)]
        else:
            last = deps_node.value[-1]
            at = last.end_mark.line + (last.end_mark.column > 0)
            edits.append((at, at, new))
    for start, end, new in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[start:end] = new
    out = "".join(lines)
    after = read_stages_text(out, dvc_yaml)
    wrong = [n for n in stages if [d for d in dep_paths(after.get(n, {})) if project.is_code_path(d)] != derived[n]]
    if wrong or _without_code_deps(yaml.safe_load(text), project) != _without_code_deps(yaml.safe_load(out), project):
        raise ConfigError(dvc_yaml, f"rewriting the code deps would change more than them (stages {wrong or changed})",
                          "edit the deps by hand from `python -m components.orchestration.code_deps`")
    return out, changed


def _value(mapping: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(mapping, yaml.MappingNode):
        return None
    return next((v for k, v in mapping.value if getattr(k, "value", None) == key), None)


def _after_key(lines: list[str], mapping: yaml.MappingNode, i: int) -> int:
    """The line just after key i's value, before any blank or comment lines that lead into the next key."""
    start = mapping.value[i][0].start_mark.line
    end = mapping.value[i + 1][0].start_mark.line if i + 1 < len(mapping.value) else mapping.end_mark.line
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1
    return end


def _without_code_deps(doc: dict, project: Project) -> dict:
    for spec in doc.get("stages", {}).values():
        data = [d for d in spec.get("deps") or [] if not (isinstance(d, str) and project.is_code_path(d))]
        spec.pop("deps", None)
        if data:
            spec["deps"] = data
    return doc


def render(codes: Iterable[StageCode]) -> str:
    """Every stage's code deps as the lines to paste under its `deps:` in dvc.yaml."""
    out = []
    for code in codes:
        out.append(f"{code.stage}:")
        out += [f"      - {p}" for p in code.files] or ["      (runs no project code)"]
        out += [f"      # cannot follow {u.where}: {u.problem}" for u in code.unfollowed]
    return "\n".join(out)


@stage_main("code_deps")
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dvc-yaml", type=Path, default=Path("dvc.yaml"))
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if any stage's code deps differ")
    mode.add_argument("--write", action="store_true", help="replace each stage's code deps in the file")
    args = ap.parse_args(argv)
    if args.check:
        drifts = check(args.dvc_yaml)
        for d in drifts:
            print(d.message(), file=sys.stderr)
        if drifts:
            raise SystemExit(1)
        print(f"{args.dvc_yaml}: every stage's code deps match its imports")
    elif args.write:
        text, changed = rewrite(args.dvc_yaml)
        if changed:
            args.dvc_yaml.write_text(text, encoding="utf-8")
        print(f"{args.dvc_yaml}: code deps rewritten for {', '.join(changed) or 'no stage (all matched)'}")
        if unfollowed := [d for d in check(args.dvc_yaml) if d.unfollowed]:
            print("\n".join(d.message() for d in unfollowed), file=sys.stderr)
            raise SystemExit(1)
    else:
        project = Project(args.dvc_yaml.resolve().parent)
        print(render(stage_code(project, n, s["cmd"]) for n, s in read_stages(args.dvc_yaml).items()))


if __name__ == "__main__":
    main()
