"""`srec`'s registry and run verbs on the pipeline that `srec run` reproduced once per session
(tests/data/conftest.py `reproduced`): what each prints is what the registry and DVC hold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SREC = str(Path(sys.executable).with_name("srec"))


@pytest.mark.slow
def test_registry_verbs_on_a_reproduced_pipeline(reproduced):
    def srec(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([SREC, *args], cwd=reproduced.ws, env=reproduced.env, capture_output=True, text=True,
                              timeout=120)

    tag = json.loads((reproduced.ws / "reports" / "package.json").read_text())["tag"]
    listed = srec("models")
    assert listed.returncode == 0 and listed.stdout.startswith(f"* {tag} "), listed.stdout + listed.stderr
    shown = srec("show")
    assert shown.returncode == 0 and json.loads(shown.stdout)["tag"] == tag  # one JSON document: `srec show | jq`
    card = srec("card")
    page = Path(card.stdout.strip())
    assert card.returncode == 0 and page.name == "model_card.html" and tag.split(":")[1] in str(page)
    assert "<html" in page.read_text()[:500].lower()
    assert srec("verify").stdout.strip() == f"{tag}: every file as packaged"
    # one version only: nothing to roll back to, said in one line, and production stays where it was
    back = srec("rollback")
    assert back.returncode == 1 and back.stderr.startswith("ERROR [registry]"), back.stderr
    assert srec("models").stdout.startswith(f"* {tag} ")
    unknown = srec("card", "llmsrec:nope")
    assert unknown.returncode != 0 and "llmsrec:nope" in unknown.stderr, unknown.stderr
    runs = subprocess.run([SREC, "runs"], cwd=reproduced.ws, env={**reproduced.env, "COLUMNS": "120"},
                          capture_output=True, text=True, timeout=120)  # DVC fits its table to the terminal
    assert runs.returncode == 0 and "ndcg@10.llmsrec" in runs.stdout.replace("\n", ""), runs.stdout
