"""Stage `report`: one self-contained HTML page per pipeline run, which `package` stores as the model card.

Reads what the stages before it wrote (every one a dep in dvc.yaml): validate's and prepare's summaries, the
drift reports of the batches in the raw store (`data/batches/<batch_id>/drift.json`, where the landing wrote
one), both training summaries and curves (the PNGs are inlined as `data:` URIs), evaluate's metrics and the
gate's report. Writes `--out reports/run_report.html`: static, no script, no CDN, no fetch (this product runs
offline); the links to the Great Expectations Data Docs and to each batch's drift HTML are relative and so
resolve in the workspace that ran it (a copy elsewhere, e.g. the model card inside a package, keeps the text).

Shown: data counts and quarantined rows; drift per batch ("no drift report" for the base data and for
batches landed before drift checks existed); the training curves; the metrics table, the shuffle diagnostic
and the gate's paired intervals; each gate check against its threshold; the gate's decision and why; the data
version, the commit the models were trained at and the params diff against the champion.

What the page depends on, honestly (dvc.yaml's header: outputs are functions of the stage's inputs):
- the champion is the production model the gate judged against, named in `gate.json`
  (`reasons.production_before`, a dep); its params are read from the registry, where a packaged version's
  metadata never changes, so the same gate report always gives the same diff;
- the params are those of every section but `DEPLOYMENT_SECTIONS` (dvc.yaml lists the same as the
  stage's params): where the pipeline runs does not change the page;
- the commit is the one exception, on purpose: it is read from the training stages' run records
  (`--run-records`, declared as nothing), the commit `pretrain_sasrec` and `distill` last ran at in this
  workspace, labelled "trained at commit". A forced re-run of a training stage at a later commit that writes
  the same outputs leaves this page as it was (DVC sees nothing new), and the page then names the earlier
  commit, whose code wrote those outputs too. A record that is not in this workspace (the stage ran on
  another worker, orchestration.exchange) shows as "not recorded here"; so two executors write pages that
  differ in these lines only, and `dvc repro -f -s report` after a training stage re-ran at another commit
  writes a new page (and so a new package version, whose card it is).
"""

from __future__ import annotations

import argparse
import base64
import html
import os
import time
from pathlib import Path
from typing import Any

from components.config import load_params
from components.errors import DataError, stage_main
from components.io import numbers_only, read_json, write_json
from components.serving.decision import read_decision
from components.serving.registry import get_model
from components.stages.package import data_version_of, metadata_safe, write_text_atomic
from components.timings import write_timings

#: the drift report the landing writes next to each accepted batch (components/orchestration/drift.py)
DRIFT_JSON, DRIFT_HTML = "drift.json", "drift.html"
#: params.yaml sections about where and how the pipeline runs, not about the model: neither a dep of the stage
#: (an Airflow/Celery deployment and a local one then write the same page) nor in the diff against the champion
DEPLOYMENT_SECTIONS = ("orchestration",)
#: the metric columns of the metrics table, in order
METRIC_COLUMNS = ("ndcg@10", "hr@10", "ndcg@20", "hr@20", "n_users")

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#176117;font-weight:600}.fail{color:#a11;font-weight:600}.skip{color:#777}
.decision{font-size:1.2em;padding:.5em 1em;border-radius:4px;display:inline-block}
.promoted{background:#dff3df}.provisional{background:#fff3cd}.rejected{background:#f8d7da}
img{max-width:100%;border:1px solid #ddd}code{background:#f5f5f5;padding:0 .2em}.muted{color:#666}
"""


def esc(value: Any) -> str:
    return html.escape("null" if value is None else str(value))


def num(value: Any, digits: int = 4) -> str:
    """A number as the tables show it; anything else escaped as text."""
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def table(header: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    """An HTML table of `rows` (cells are HTML already: escape with `esc`/`num`; a cell starting with `<td`
    is taken whole), with a header row unless `header` is None (a two-column list of facts)."""
    head = "" if header is None else "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>"
    body = "".join("<tr>" + "".join(c if c.startswith("<td") else f"<td>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def td_num(value: Any, digits: int = 4) -> str:
    return f'<td class="num">{num(value, digits)}</td>'


def status(passed: bool | None, skipped: bool = False) -> str:
    if skipped:
        return '<td class="skip">skipped</td>'
    return '<td class="pass">pass</td>' if passed else '<td class="fail">FAIL</td>'


def image(path: Path, alt: str) -> str:
    """The PNG at `path` inlined as a data: URI (the page fetches nothing)."""
    if not path.is_file():
        return f'<p class="muted">no plot ({esc(path)} not written)</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def interval(ci: list | None) -> str:
    if not ci:
        return "-"
    return "[" + ", ".join("open" if v is None else f"{v:+.4f}" for v in ci) + "]"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": leaf} of a nested dict (lists are leaves)."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


def params_diff(current: dict[str, Any], champion: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, champion's value, this run's value) of every param that differs, keys sorted. Both sides go
    through package's `metadata_safe` first, as the champion's were stored (None -> "null")."""
    a, b = flatten(metadata_safe(champion)), flatten(metadata_safe(current))
    return [(k, a.get(k, "(absent)"), b.get(k, "(absent)")) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def champion_params(tag: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """(the champion's recorded params, a note when they cannot be shown)."""
    if tag is None:
        return None, "no champion: nothing was in production when the gate judged this model"
    try:
        meta = get_model(tag).info.metadata
    except DataError as e:
        return None, f"champion {tag} cannot be read from the store ({e})"
    params = meta.get("params")
    if not isinstance(params, dict):
        return None, f"champion {tag} recorded no params"
    return {k: v for k, v in params.items() if k not in DEPLOYMENT_SECTIONS}, None


def trained_at(records: list[Path]) -> list[tuple[str, str]]:
    """(stage, "commit (+ uncommitted changes)" or why unknown) from the training stages' run records."""
    out = []
    for path in records:
        rec = read_json(path) if path.is_file() else None
        if rec is None:
            out.append((path.stem, "not recorded here (no run record in this workspace)"))
        elif not rec.get("commit"):
            out.append((rec.get("stage", path.stem), "unknown (not run in a git work tree)"))
        else:
            out.append((rec.get("stage", path.stem),
                        rec["commit"] + (" + uncommitted changes under components/" if rec.get("code_dirty") else "")))
    return out


def relative(path: Path, start: Path) -> str:
    """`path` as a link from a page in `start` (both relative to the project root, or both absolute)."""
    return Path(os.path.relpath(path, start)).as_posix()


def docs_link(docs: Path | None, page_dir: Path) -> str:
    if docs is None:
        return '<p class="muted">No Great Expectations Data Docs were named (--data-docs).</p>'
    index = docs / "index.html"
    return (f'<p>Great Expectations Data Docs: <a href="{esc(relative(index, page_dir))}">{esc(index)}</a> '
            "(a link into the workspace that ran this run)</p>")


def drift_section(store: Path, page_dir: Path) -> str:
    """One table row per accepted batch: its drift decision and checks, or "no drift report"."""
    rows = [["base data", "-", '<span class="muted">no drift report (the data the batches join)</span>', "-"]]
    batches = sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")) if store.is_dir() else []
    for d in batches:
        report = d / DRIFT_JSON
        if not report.is_file():
            rows.append([esc(d.name), "-", '<span class="muted">no drift report</span>', "-"])
            continue
        drift = read_json(report)
        checks = drift.get("checks") or {}
        lines = "<br>".join(
            f"{esc(name)}: {num(c.get('value'))} \u2192 <b>{esc(c.get('decision'))}</b>"
            for name, c in sorted(checks.items()) if isinstance(c, dict))
        link = (f'<a href="{esc(relative(d / DRIFT_HTML, page_dir))}">drift.html</a>' if (d / DRIFT_HTML).is_file()
                else "-")
        rows.append([esc(d.name), f"<b>{esc(drift.get('decision'))}</b>", lines or "-", link])
    note = "" if batches else '<p class="muted">No batch has landed in the raw store.</p>'
    return note + table(["batch", "decision", "checks (value \u2192 decision)", "details"], rows, "drift")


def metrics_section(metrics: dict[str, Any]) -> str:
    models = [m for m in metrics if not m.endswith("_shuffled") and isinstance(metrics[m], dict)]
    rows = [[esc(m), *(td_num(metrics[m].get(c)) for c in METRIC_COLUMNS),
             td_num((metrics[m].get("full_catalogue") or {}).get("ndcg@10"))] for m in models]
    main = table(["model", *METRIC_COLUMNS, "ndcg@10 (full catalogue)"], rows, "metrics")
    shuffle = [[esc(m), td_num(metrics[m]["ndcg@10"]), td_num(metrics[f"{m}_shuffled"]["ndcg@10"]),
                td_num((metrics[f"{m}_shuffled"].get("shuffle_drop") or {}).get("ndcg@10"))]
               for m in models if f"{m}_shuffled" in metrics]
    diag = ("<h3>Shuffle diagnostic</h3><p>Each test history shuffled before scoring: a model that uses the order "
            "of a history loses NDCG@10 (the paper's finding; the gate's <code>shuffle_drop</code> check).</p>"
            + (table(["model", "ndcg@10", "ndcg@10 shuffled", "relative drop"], shuffle, "shuffle") if shuffle
               else '<p class="muted">no shuffled evaluation (evaluate.shuffle is empty)</p>'))
    return main + diag


def paired_section(checks: dict[str, dict[str, Any]]) -> str:
    rows = []
    for name, c in checks.items():
        comp = c.get("comparison")
        if not comp:
            continue
        rows.append([esc(name), td_num(comp.get("mean_a")), td_num(comp.get("mean_b")), td_num(c.get("value")),
                     esc(interval(c.get("interval"))), td_num(comp.get("p_value")), td_num(comp.get("n_users")),
                     esc(c.get("decided_on"))])
    if not rows:
        return '<p class="muted">No paired comparison was made (no per-user results, or the checks are off).</p>'
    return table(["check", "this model", "reference", "relative change", "95% interval", "p", "users",
                  "decided on"], rows, "paired")


def gate_section(gate: dict[str, Any]) -> str:
    rows = [[esc(name), status(c["passed"], bool(c.get("skipped"))), td_num(c.get("value")),
             td_num(c.get("threshold")), esc(c.get("note") or c.get("decided_on") or "")]
            for name, c in gate["checks"].items()]
    return table(["check", "result", "value", "threshold", "note"], rows, "gate")


def decision_section(gate: dict[str, Any]) -> str:
    d, reasons = gate["decision"], gate["reasons"]
    what = {"promoted": "will be packaged and made production",
            "provisional": "will be packaged and made production, flagged provisional (the first model: "
                           "replaced by the next model that passes)",
            "rejected": "is not released; production stays as it was"}[d]
    facts = [["model", esc(gate.get("model"))], ["decision", f"<b>{esc(d)}</b>: this model {what}"],
             ["why", esc(gate["reason"])],
             ["failed checks", esc(", ".join(reasons["failed_checks"]) or "none")],
             ["production when judged", esc(reasons["production_before"] or "none")],
             ["first-model policy", esc(reasons["first_model_policy"])]]
    return f'<p class="decision {esc(d)}">{esc(d.upper())}: {esc(gate["reason"])}</p>' + table(None, facts, "facts")


def render(args, params: dict[str, Any]) -> str:
    """The page, from the files named in `args` (the stage's command line) and this run's `params`."""
    for path in (args.validation, args.data_summary, args.metrics):
        if not path.is_file():
            raise DataError(path, "not found", "run the pipeline up to the gate first: `dvc repro gate`")
    gate = read_decision(args.gate)
    validation, data = read_json(args.validation), read_json(args.data_summary)
    metrics = read_json(args.metrics)
    q = validation.get("rows_quarantined", {})
    data_rows = [["users", td_num(data.get("users"))], ["items", td_num(data.get("items"))],
                 ["interactions", td_num(data.get("interactions"))],
                 ["test users evaluated", td_num(data.get("evaluated_users"))],
                 ["sequence length min / mean / max",
                  esc(" / ".join(str(v) for v in (data.get("sequence_length") or {}).values()))],
                 ["rows checked (interactions, items)", esc(", ".join(
                     f"{v:,}" for v in (validation.get("rows_checked") or {}).values()))],
                 ["quarantined interactions", td_num(q.get("interactions"))],
                 ["quarantined items", td_num(q.get("items"))],
                 ["bad fraction (limit)", esc(f"{validation.get('bad_fraction')} ({validation.get('max_bad_fraction')})")]]
    by_exp = validation.get("quarantined_by_expectation") or {}
    quarantine = ("" if not by_exp else table(["expectation", "rows quarantined"],
                                              [[esc(k), td_num(v)] for k, v in sorted(by_exp.items())]))

    champion = gate["reasons"]["production_before"]
    champ_params, note = champion_params(champion)
    if champ_params is None:
        diff_html = f'<p class="muted">{esc(note)}</p>'
    else:
        diff = params_diff(params, champ_params)
        diff_html = (f"<p>Against the champion <code>{esc(champion)}</code>'s recorded params:</p>"
                     + (table(["param", "champion", "this run"], [[esc(k), esc(a), esc(b)] for k, a, b in diff])
                        if diff else "<p>identical params</p>"))
    version = [["data version (DVC md5 of data/prepared)", f"<code>{esc(data_version_of(args.prepared))}</code>"]]
    version += [[f"trained at commit ({esc(stage)})", f"<code>{esc(c)}</code>"] for stage, c in trained_at(args.run_records)]

    train = []
    for name, summary_path, plot in (("SASRec", args.sasrec_summary, args.sasrec_plot),
                                     ("LLM-SRec (distillation)", args.distill_summary, args.distill_plot)):
        s = read_json(summary_path) if summary_path.is_file() else {}
        facts = ", ".join(f"{esc(k)} {v:,}" if isinstance(v, int) else f"{esc(k)} {v:.4g}" for k, v in s.items()
                          if isinstance(v, int | float) and not isinstance(v, bool))
        train.append(f"<h3>{esc(name)}</h3><p class='muted'>{facts or 'no training summary'}</p>{image(plot, name + ' curve')}")

    title = f"Run report: {gate.get('model')} {gate['decision']}"
    sections = [
        ("Decision", decision_section(gate)),
        ("Data", table(None, data_rows, "data") + quarantine
          + docs_link(args.data_docs, args.out.parent)),
        ("Drift of the batches in the store", drift_section(args.batches, args.out.parent)),
        ("Training curves", "".join(train)),
        ("Test metrics (fixed candidates)", metrics_section(metrics)),
        ("Paired comparisons of the gate (per-user NDCG@10, 95% bootstrap)", paired_section(gate["checks"])),
        ("Gate checks", gate_section(gate)),
        ("Versions", table(None, version, "versions")),
        ("Params against the champion", diff_html),
    ]
    body = "".join(f'<h2 id="{esc(t.split()[0].lower())}">{esc(t)}</h2>{h}' for t, h in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>\n")


@stage_main("report")
def headline(metrics: dict[str, Any], gate: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The run in a few numbers, the one DVC metrics file (`dvc metrics show`, `dvc exp show` read it):
    test NDCG@10 of each evaluated model (not its shuffled or validation variants), whether the gate passed,
    and the users and items trained on. Every stage's full numbers stay in its own file, which
    `dvc metrics show FILE` and `dvc metrics diff --targets FILE` read (any JSON of numbers is a metrics file to DVC);
    declared all together, they were one row per file of 110 columns, 2,800 characters wide."""
    ndcg = {name: m["ndcg@10"] for name, m in metrics.items()
            if isinstance(m, dict) and "ndcg@10" in m and not name.endswith("_shuffled")}
    return {"ndcg@10": ndcg, "gate_passed": bool(gate.get("passed")), "users": data.get("users"),
            "items": data.get("items")}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--validation", type=Path, required=True, help="reports/validation.json")
    ap.add_argument("--data-summary", type=Path, required=True, help="reports/data_summary.json")
    ap.add_argument("--data-docs", type=Path, help="the GX Data Docs folder (linked, relative to the project root)")
    ap.add_argument("--batches", type=Path, required=True, help="the raw store data/batches (drift reports)")
    ap.add_argument("--prepared", type=Path, required=True, help="data/prepared (its DVC version)")
    ap.add_argument("--sasrec-summary", type=Path, required=True)
    ap.add_argument("--sasrec-plot", type=Path, required=True)
    ap.add_argument("--distill-summary", type=Path, required=True)
    ap.add_argument("--distill-plot", type=Path, required=True)
    ap.add_argument("--metrics", type=Path, required=True, help="reports/metrics.json")
    ap.add_argument("--gate", type=Path, required=True, help="reports/gate.json")
    ap.add_argument("--run-records", type=Path, nargs="*", default=[],
                    help="the training stages' run records (the commit they ran at): not deps")
    ap.add_argument("--out", type=Path, required=True, help="reports/run_report.html")
    ap.add_argument("--headline", type=Path, help="reports/headline.json: the run in a few numbers (DVC's metric)")
    ap.add_argument("--timings", type=Path, help="run record (duration, host): not a DVC output")
    args = ap.parse_args(argv)
    t0 = time.time()
    params = {k: v for k, v in load_params(args.params).model_dump(mode="json", by_alias=True).items()
              if k not in DEPLOYMENT_SECTIONS}  # as package records them
    # Pure ASCII (characters beyond it as HTML references): the page reads the same under any locale.
    page = render(args, params).encode("ascii", "xmlcharrefreplace").decode("ascii")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, page)
    if args.headline is not None:
        write_json(args.headline, numbers_only(headline(read_json(args.metrics), read_json(args.gate),
                                                        read_json(args.data_summary))))
    write_timings(args.timings, "report", time.time() - t0)
    print(f"report: {args.out} ({len(page) / 1024:.0f} KiB) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
