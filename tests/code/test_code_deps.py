"""dvc.yaml's code deps against what each stage imports (components/orchestration/code_deps.py).

Pure `ast` and YAML: nothing here imports a stage, torch or DVC, so the whole file takes about a second.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from components.errors import ConfigError
from components.orchestration.code_deps import Project, check, main, rewrite, stage_code

REPO = Path(__file__).resolve().parents[2]


def test_every_stage_names_exactly_the_code_it_imports():
    drifts = check(REPO / "dvc.yaml")
    assert not drifts, "\n\n".join(d.message() for d in drifts)


def test_every_stage_with_python_code_is_checked():
    """A stage whose command the analysis could not read would pass the check with no code deps at all."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    project = Project(REPO)
    for name, spec in stages.items():
        files = stage_code(project, name, spec["cmd"]).files
        assert files[0] == f"components/stages/{name}.py", (name, files)
        assert {"components/config.py", "components/errors.py"} <= set(files), (name, files)


def test_the_check_imports_no_stage_and_no_heavy_library():
    code = ("import sys; from components.orchestration.code_deps import check; check('dvc.yaml'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'dvc', 'transformers', 'pandas')"
            " or m.startswith('components.stages')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def make_project(root: Path, files: dict[str, str], dvc_yaml: str) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text))
    (root / "dvc.yaml").write_text(textwrap.dedent(dvc_yaml))
    return root / "dvc.yaml"


ENTRY = '''\
    """The stage."""
    from __future__ import annotations

    import importlib
    import json
    from typing import TYPE_CHECKING

    import yaml

    from pkg import b
    from pkg.a import thing
    from pkg.star import *

    from . import sibling
    from ..sub import deep

    try:
        import pkg.optional
    except ImportError:
        pass

    if TYPE_CHECKING:
        from pkg.typing_only import T
    else:
        import pkg.runtime_else

    _LAZY = {"x": "pkg.lazy_x", "y": "pkg.lazy_y"}


    def main(name):
        from pkg.in_function import f

        importlib.import_module("pkg.literal")
        return importlib.import_module(_LAZY[name])
'''

FILES = {
    "pkg/__init__.py": '"""Only a docstring: running it changes nothing."""\n',
    "pkg/stages/__init__.py": '"""The stages."""\n',
    "pkg/stages/run.py": ENTRY,
    "pkg/stages/sibling.py": "S = 1\n",
    "pkg/a.py": "import pkg.transitive\nthing = 1\n",
    "pkg/transitive.py": "T = 1\n",
    "pkg/b.py": "B = 1\n",
    "pkg/sub/__init__.py": "from pkg.sub.inner import *  # code: counts\n",
    "pkg/sub/inner.py": "x = 1\n",
    "pkg/sub/deep.py": "D = 1\n",
    "pkg/star/__init__.py": '__all__ = ["m1"]\n',
    "pkg/star/m1.py": "M = 1\n",
    "pkg/star/m2.py": "M = 2\n",
    **{f"pkg/{m}.py": f"{m.upper()} = 1\n" for m in ("optional", "typing_only", "runtime_else", "lazy_x", "lazy_y",
                                                     "in_function", "literal", "unused")},
    "pkg/prompt.json": "{}\n",
    "data/raw.csv": "a\n1\n",
}

# Every kind of import in ENTRY, and nothing else: not the docstring-only __init__.py files, not the
# TYPE_CHECKING import, not star/m2 (outside __all__), not pkg/unused.py, not json or yaml.
IMPORTED = ("pkg/stages/run.py", "pkg/a.py", "pkg/b.py", "pkg/in_function.py", "pkg/lazy_x.py", "pkg/lazy_y.py",
            "pkg/literal.py", "pkg/optional.py", "pkg/runtime_else.py", "pkg/stages/sibling.py", "pkg/star/__init__.py",
            "pkg/star/m1.py", "pkg/sub/__init__.py", "pkg/sub/deep.py", "pkg/sub/inner.py", "pkg/transitive.py")


def test_follows_every_kind_of_import(tmp_path):
    make_project(tmp_path, FILES, "stages: {}\n")
    code = stage_code(Project(tmp_path), "run", "python -m pkg.stages.run --out data/x")
    assert code.files == IMPORTED
    assert code.unfollowed == ()
    assert stage_code(Project(tmp_path), "shell", "cp a b").files == ()  # no Python: no code deps
    assert stage_code(Project(tmp_path), "tool", "python -m yaml.tool x").files == ()  # not project code


def test_a_command_running_a_module_that_is_gone_is_reported(tmp_path):
    """A stage module renamed without its dvc.yaml command: no files to derive, so nothing else would fail."""
    make_project(tmp_path, FILES, "stages: {}\n")
    for cmd in ("python -m pkg.stages.renamed --out x", "python pkg/stages/renamed.py"):
        code = stage_code(Project(tmp_path), "run", cmd)
        assert code.files == () and len(code.unfollowed) == 1, cmd
        assert code.unfollowed[0].where == "dvc.yaml: stages.run.cmd" and "renamed" in code.unfollowed[0].problem


def test_a_module_name_computed_at_run_time_is_reported(tmp_path):
    files = {"pkg/__init__.py": "", "pkg/run.py": "import importlib\n\n\ndef main(n):\n    importlib.import_module(n)\n",
             "pkg/gone.py": "import pkg.never_written\n"}
    dvc = make_project(tmp_path, files, """\
        stages:
          run:
            cmd: python -m pkg.run
            deps:
              - pkg/run.py
        """)
    [d] = check(dvc)
    assert [(u.where, u.problem) for u in d.unfollowed] == [
        ("pkg/run.py:5", "imports a module whose name is computed at run time")]
    assert "import those modules by a literal name" in d.message()


DVC_YAML = """\
    stages:
      run:
        # the stage's comment
        cmd: >-
          python -m pkg.stages.run
          --out data/x
        deps:
          - data/raw.csv
          - pkg/prompt.json
          - pkg/stages/run.py
          - pkg/a.py   # why a.py
          - pkg/sub
          - pkg/unused.py
          - pkg/__init__.py
          - pkg/moved_away.py
        params:
          - seed
        outs:
          - data/x
      ingest:
        cmd: python -m pkg.b
        # leads into always_changed
        always_changed: true
        outs:
          - data/y
      tail:
        cmd: python -m pkg.b
        deps:
          - data/x
    """


def test_missing_stale_folder_and_absent_deps_are_named_with_the_fix(tmp_path):
    dvc = make_project(tmp_path, FILES, DVC_YAML)
    drifts = {d.stage: d for d in check(dvc)}
    assert set(drifts) == {"run", "ingest", "tail"}
    run = drifts["run"]
    assert run.missing == tuple(p for p in IMPORTED if p not in {"pkg/stages/run.py", "pkg/a.py"})
    assert dict(run.stale) == {
        "pkg/sub": "a folder (the stage imports 3 of its 3 .py files; DVC also hashes its __pycache__): list the files",
        "pkg/unused.py": "the stage does not import it",
        "pkg/__init__.py": "it holds only a docstring, so running it changes nothing",
        "pkg/moved_away.py": "does not exist (dvc repro would delete the stage's outputs, then stop)",
    }  # data/raw.csv and pkg/prompt.json are data: not judged
    message = run.message()
    assert message.startswith("dvc.yaml: stage 'run': ")
    for path in (*run.missing, *dict(run.stale)):
        assert f"    {path}" in message
    fix = message.split("--write`):\n")[1].splitlines()
    assert fix == [f"      - {p}" for p in IMPORTED]
    assert drifts["ingest"].missing == ("pkg/b.py",) and drifts["ingest"].stale == ()


def test_write_changes_only_the_code_entries(tmp_path):
    dvc = make_project(tmp_path, FILES, DVC_YAML)
    before = yaml.safe_load(dvc.read_text())
    text, changed = rewrite(dvc)
    assert changed == ["run", "ingest", "tail"]
    dvc.write_text(text)
    assert check(dvc) == []
    after = yaml.safe_load(text)
    for name in before["stages"]:
        for key in set(before["stages"][name]) | set(after["stages"][name]):
            if key != "deps":
                assert after["stages"][name][key] == before["stages"][name][key], (name, key)
    assert after["stages"]["run"]["deps"] == ["data/raw.csv", "pkg/prompt.json", *IMPORTED]
    assert after["stages"]["ingest"]["deps"] == ["pkg/b.py"]
    assert after["stages"]["tail"]["deps"] == ["data/x", "pkg/b.py"]
    # Comments stay where they were, a kept entry keeps its own, and a new `deps:` follows `cmd`.
    assert "    # the stage's comment\n" in text and "      - pkg/a.py   # why a.py\n" in text
    assert "    cmd: python -m pkg.b\n    deps:\n      - pkg/b.py\n    # leads into always_changed\n" in text
    assert rewrite(dvc) == (text, [])


def test_write_reproduces_todays_dvc_yaml_from_drifted_lists(tmp_path):
    """The lead's path after moving modules: scramble the real lists, and --write gives back the file."""
    real = (REPO / "dvc.yaml").read_text()
    drifted = real.replace("      - components/config.py\n", "")  # a missing import in every stage
    drifted = drifted.replace("      - components/io.py\n", "      - components/evaluation\n")  # a folder
    drifted = re.sub(r"(  ingest_batches:\n(?:.*\n)*?.*--timings reports/timings/ingest_batches.json\n)"
                     r"    deps:\n(?:      - .*\n)+", r"\1", drifted)  # a stage with no deps at all
    assert drifted.count("components/") < real.count("components/") and "  ingest_batches:\n" in drifted
    (tmp_path / "components").symlink_to(REPO / "components")
    (tmp_path / "dvc.yaml").write_text(drifted)
    assert {d.stage for d in check(tmp_path / "dvc.yaml")} == set(yaml.safe_load(real)["stages"])
    text, _ = rewrite(tmp_path / "dvc.yaml")
    assert text == real


def test_cli_prints_checks_and_writes(tmp_path, capsys):
    dvc = make_project(tmp_path, FILES, DVC_YAML)
    main(["--dvc-yaml", str(dvc)])
    printed = capsys.readouterr().out
    assert printed.startswith("run:\n" + "\n".join(f"      - {p}" for p in IMPORTED) + "\ningest:\n      - pkg/b.py\n")
    with pytest.raises(SystemExit) as failed:
        main(["--dvc-yaml", str(dvc), "--check"])
    assert failed.value.code == 1 and "stage 'tail'" in capsys.readouterr().err
    main(["--dvc-yaml", str(dvc), "--write"])
    main(["--dvc-yaml", str(dvc), "--check"])
    assert capsys.readouterr().out.endswith("every stage's code deps match its imports\n")


def test_templated_stages_are_refused_by_name(tmp_path):
    dvc = make_project(tmp_path, {"pkg/__init__.py": ""}, """\
        stages:
          train:
            foreach: [a, b]
            do:
              cmd: python -m pkg.train ${item}
        """)
    with pytest.raises(ConfigError, match="stage 'train' is not a plain stage"):
        check(dvc)
