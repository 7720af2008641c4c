"""`srec`, the console script: every everyday verb is there, says what it does, and wraps the module
that already does it (the same output, the same one-line errors)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, venv_env

SREC = Path(sys.executable).with_name("srec")
VERBS = {"run", "runs", "land", "models", "show", "card", "promote", "rollback", "verify", "serve", "check-params",
         "pools"}


def srec(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    if not SREC.is_file():
        pytest.fail(f"{SREC} is missing: `make setup` installs the project's console scripts (pyproject.toml)")
    return subprocess.run([str(SREC), *args], cwd=cwd, env=venv_env(), capture_output=True, text=True, timeout=120)


def test_help_lists_every_verb_with_a_sentence():
    out = srec("--help")
    assert out.returncode == 0, out.stderr
    listed = {}
    for line in out.stdout.split("Commands:")[1].splitlines():
        if line.strip():
            name, _, summary = line.strip().partition(" ")
            listed[name] = summary.strip()
    assert set(listed) == VERBS
    # one whole sentence each, never cut off with "..."
    assert all(s.endswith(".") and not s.endswith("...") for s in listed.values()), listed


def test_each_verb_has_its_own_help():
    # in this process (click's runner): a process per verb would cost a second each for the same check
    from click.testing import CliRunner

    from components.cli import cli

    for verb in sorted(VERBS - {"land"}):
        out = CliRunner().invoke(cli, [verb, "--help"], prog_name="srec")
        assert out.exit_code == 0 and f"Usage: srec {verb}" in out.output, out.output
        assert len(out.output.splitlines()) >= 4, out.output  # a description beyond the usage line


def test_forwarded_verbs_show_the_module_help_under_their_own_name():
    out = srec("land", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: srec land ") and "drop" in out.stdout
    assert "The landing zone" in out.stdout  # the module's docstring: no second copy of it


def test_land_list_is_the_landing_module(tmp_path):
    wrapped = srec("land", "list")
    module = subprocess.run([sys.executable, "-m", "components.data.landing", "list"], cwd=REPO, env=venv_env(),
                            capture_output=True, text=True, timeout=120)
    assert wrapped.returncode == module.returncode == 0, wrapped.stderr
    assert wrapped.stdout == module.stdout


def test_outside_the_checkout_names_the_folder_to_cd_into():
    out = srec("models", cwd=REPO / "tests")
    assert out.returncode == 2
    assert f"{REPO / 'tests'} has no dvc.yaml and params.yaml" in out.stderr and f"Fix: cd {REPO}" in out.stderr


def test_check_params_names_the_bad_knob(tmp_path):
    assert srec("check-params").stdout.startswith("params.yaml: valid")
    bad = tmp_path / "params.yaml"
    bad.write_text((REPO / "params.yaml").read_text().replace("seed: 42", "seed: forty-two"))
    out = srec("check-params", "--params", str(bad))
    assert out.returncode == 1 and out.stderr.startswith("ERROR [config]") and "seed" in out.stderr, out.stderr
