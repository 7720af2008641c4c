"""The README a new user reads: short, with a table of contents that leads somewhere, links that resolve,
`srec` commands that exist, and a quick-start output that a real run printed (benchmarks/quickstart.py)."""

from __future__ import annotations

import json
import re

from benchmarks.report import quickstart_block
from components.cli import cli
from tests.conftest import REPO

README = (REPO / "README.md").read_text()
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens and underscores dropped,
    spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(text: str) -> set[str]:
    body = re.sub(r"```.*?```", "", text, flags=re.S)  # a `# comment` in a code block is no heading
    return {anchor(h) for h in re.findall(r"^#{1,6} (.+)$", body, re.M)}


def test_the_readme_is_short_and_its_contents_lead_to_its_sections():
    assert len(README.splitlines()) <= 300
    contents = next(line for line in README.split("\n\n") if line.startswith("**Contents:**"))
    targets = re.findall(r"\]\(#([\w-]+)\)", contents)
    assert len(targets) >= 10 and set(targets) <= headings(README), set(targets) - headings(README)


def test_every_relative_link_in_the_docs_resolves():
    broken = []
    for page in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, frag = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(REPO)}: {target}")
            elif frag and dest.suffix == ".md" and frag not in headings(dest.read_text()):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken


def test_every_srec_command_in_the_docs_exists():
    verbs = set(cli.commands)
    used = {m for page in DOCS for m in re.findall(r"(?:^|[\s`(])srec ([a-z][\w-]*)", page.read_text(), re.M)}
    assert used and used <= verbs, used - verbs


def test_the_quick_start_shows_what_a_recorded_run_printed():
    result = json.loads((REPO / "benchmarks" / "results" / "quickstart.json").read_text())
    assert quickstart_block(result) in README, "run `python -m benchmarks.report --readme README.md`"
    assert result["summary"][0].startswith("data: ") and result["run_seconds"] > 0


def test_the_recorded_summary_is_the_block_make_run_ends_with():
    from benchmarks.quickstart import summary_lines

    out = ("Running stage 'gate':\ngate: PROMOTED (gate passed) in 0.8s\npackage: llmsrec:abc is production in 2.5s\n"
           "data: 600 users, 400 items\ntest NDCG@10 on the fixed candidates: popularity 0.1\ngate: promoted\n"
           "package: llmsrec:abc is production; serve it with `srec serve`\n")
    assert summary_lines(out) == out.splitlines()[3:]
