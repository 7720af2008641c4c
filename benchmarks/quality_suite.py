"""The LLM-SRec comparison on one real dataset: six rows on the same splits and candidates.

    python -m benchmarks.quality_suite --dataset health --minutes 8 [--rows ROW,ROW] [--set KEY=VALUE] [--workdir DIR]
    python -m benchmarks.quality_suite --dataset health --users 10000 --minutes 90 --rows sasrec,llmsrec   # headline

Each row is one `benchmarks.quality` run (the real pipeline stages, in a scratch workspace) and writes
`benchmarks/results/suite/<dataset>/<row>.json` (`<dataset>_<users>` when `--users` differs from the
dataset's default size), with the per-user ranks beside it; `python -m benchmarks.report` renders the table.

- `sasrec`: popularity and SASRec with the full window (`sasrec.max_len` from params.yaml);
- `sasrec_len10`: SASRec reading only the prompt's 10 most recent items;
- `llmsrec_paper`: the paper's LLM-SRec settings (prompt, readout, targets, negatives), on the first
  `--paper-layers` layers of the LLM (30 = all, the paper; 4 by default so a row fits this CPU's budget);
- `llmsrec`: the chosen settings, params.yaml's distill section as it is;
- `llmsrec_no_distill_uniform`: the chosen settings without L_distill and L_uniform (the paper's ablation);
- `llmsrec_neutral_titles`: the chosen settings with every title replaced by `Product <item_id>` (does the
  text matter?);
- `llmsrec_no_llm`: the chosen settings with the LLM pass replaced by the identity: the same adapters,
  losses, data and budget, the state read being the injected vector itself (does the LLM matter?);
- `llmsrec_no_cf_dropout`: the chosen settings without CF dropout (`distill.cf_dropout` 0: every slot always
  holds SASRec's item embedding beside the title's state).

Every row's JSON holds a paired comparison of each model with SASRec over the same test users
(`paired_vs_sasrec`: a paired bootstrap of NDCG@10, components/evaluation/paired.py); `benchmarks.report`
compares each ablation row with the chosen row the same way, from the per-user ranks kept beside each JSON.

The LLM-SRec rows share one workspace, so they share the data stages and the SASRec teacher, and they
all train for the same wall-clock budget (`distill.max_minutes = --minutes`, validation included).
Not part of CI: a row takes minutes to tens of minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks import quality

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
#: name -> (folder under ../shared/data, users sampled, data.columns): the sizes the real-data suite runs at
DATASETS = {"ml1m": ("ml-1m-seqrec", 2000, ["item_id=movie_id"]), "health": ("amazon2014-health", 3000, []),
            "videogames": ("amazon2018-videogames", 3000, [])}
PAPER = ["distill.prompt=paper", "distill.readout=token", "distill.targets=last", "distill.negatives=sampled",
         "distill.num_negatives=3", "distill.lr_decay=0.95", "distill.text_layer=null",
         "distill.cf_dropout=0"]
#: row -> (models, workspace, overrides); `{layers}` is --paper-layers
ROWS: dict[str, tuple[str, str, list[str]]] = {
    "sasrec": ("popularity,sasrec", "shared", []),
    "sasrec_len10": ("sasrec", "len10", ["sasrec.max_len=10"]),
    "llmsrec_paper": ("popularity,sasrec,llmsrec", "shared", [*PAPER, "llm.num_layers={layers}"]),
    "llmsrec": ("popularity,sasrec,llmsrec", "shared", []),
    "llmsrec_no_distill_uniform": ("popularity,sasrec,llmsrec", "shared",
                                   ["distill.use_distill_loss=false", "distill.use_uniform_loss=false"]),
    "llmsrec_neutral_titles": ("popularity,sasrec,llmsrec", "shared", ["distill.neutral_titles=true"]),
    "llmsrec_no_llm": ("popularity,sasrec,llmsrec", "shared", ["distill.llm_pass=false"]),
    "llmsrec_no_cf_dropout": ("popularity,sasrec,llmsrec", "shared", ["distill.cf_dropout=0"]),
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {list(ROWS)}")
    ap.add_argument("--minutes", type=float, default=8.0, help="distill.max_minutes of every LLM-SRec row")
    ap.add_argument("--users", type=int, help="users sampled after the 5-core (default: the dataset's size in DATASETS)")
    ap.add_argument("--paper-layers", default="4", help="llm.num_layers of llmsrec_paper (null = all 30)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a params.yaml override for every row, e.g. sasrec.max_minutes=8 (repeatable)")
    ap.add_argument("--data-root", type=Path, default=SHARED)
    ap.add_argument("--workdir", type=Path, help="parent of the row workspaces (default: a new temporary one)")
    ap.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "suite")
    args = ap.parse_args(argv)

    folder, users, columns = DATASETS[args.dataset]
    name = args.dataset if args.users in (None, users) else f"{args.dataset}_{args.users}"
    users = args.users or users
    path = args.data_root / folder
    if not (path / "interactions.tsv").is_file():
        raise SystemExit(f"{path}/interactions.tsv not found: pass --data-root, the folder that holds {folder}/")
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    if unknown := sorted(set(rows) - set(ROWS)):
        raise SystemExit(f"unknown rows {unknown}: choose from {list(ROWS)}")
    root = args.workdir or Path(tempfile.mkdtemp(prefix=f"suite-{args.dataset}-"))
    for row in rows:
        models, space, sets = ROWS[row]
        sets = [*args.set, *(s.format(layers=args.paper_layers) for s in sets)]
        if "llmsrec" in models:
            sets.append(f"distill.max_minutes={args.minutes:g}")
        quality.main(["--models", models, "--source", "files", "--path", str(path), "--max-users", str(users),
                      *(a for c in columns for a in ("--column", c)),
                      *(a for s in sets for a in ("--set", s)), "--workdir", str(root / space), "--resume",
                      "--out", str(args.results / name / f"{row}.json")])


if __name__ == "__main__":
    main()
