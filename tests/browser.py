"""A page as a person sees it: rendered by headless Chromium (Debian's `chromium`, `make chromium-setup`).

`render` loads a copy of the page with a small script appended that, once the page has loaded, writes what
the browser itself measured into the DOM (each image's decoded `naturalWidth`, each table's rendered height
and rows), and reads the DOM back with `chromium --headless --dump-dom`. The page under test is not changed:
only the copy carries the script.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROBE = """<script>
window.addEventListener("load", () => {
  const seen = {
    images: [...document.images].map(i => ({alt: i.alt, naturalWidth: i.naturalWidth, complete: i.complete})),
    tables: [...document.querySelectorAll("table")].map(t => ({
      cls: t.className, height: t.offsetHeight,
      rows: [...t.tBodies[0].rows].map(r => [...r.cells].map(c => c.innerText.trim()))})),
    title: document.title,
    text: document.body.innerText,
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(seen);
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("headless Chromium is not installed: run `make chromium-setup` (Debian's `chromium` package)")
    return path


def render(page: Path, work: Path) -> dict:
    """What Chromium rendered of `page`: {images: [{alt, naturalWidth, complete}], tables: [{cls, height,
    rows}], title, text}."""
    work.mkdir(parents=True, exist_ok=True)
    copy = work / "page.html"
    copy.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={work / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
                           copy.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert proc.returncode == 0 and found, f"chromium rendered nothing (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))
