"""One-line summary of the last pipeline run, read from the reports the stages wrote."""

from __future__ import annotations

import argparse
from pathlib import Path

from components.io import read_json


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reports", type=Path, default=Path("reports"))
    args = ap.parse_args(argv)
    data = read_json(args.reports / "data_summary.json")
    validation = read_json(args.reports / "validation.json")
    print(f"data: {data['users']:,} users, {data['items']:,} items, {data['interactions']:,} interactions, "
          f"{validation['rows_quarantined']['interactions']:,} quarantined rows "
          f"(+{validation['rows_quarantined']['items']:,} items)")
    metrics_path = args.reports / "metrics.json"
    if metrics_path.is_file():  # written once the model stages have run
        metrics = read_json(metrics_path)
        parts = []
        for name, m in metrics.items():
            if name.endswith("_shuffled") or "ndcg@10" not in m:
                continue
            drop = (metrics.get(f"{name}_shuffled") or {}).get("shuffle_drop", {}).get("ndcg@10")
            # shuffle_drop is the relative fall (negative when shuffling helped): print the signed change.
            parts.append(f"{name} {m['ndcg@10']:.4f}" + (f" (shuffled {-drop:+.1%})" if drop is not None else ""))
        print("test NDCG@10 on the fixed candidates: " + ", ".join(parts))
    gate_path, package_path = args.reports / "gate.json", args.reports / "package.json"
    if gate_path.is_file():  # written by the gate and package stages
        gate = read_json(gate_path)  # the gate decides (components/stages/gate.py); this only shows it
        failed = [f"{name} {c['value']} < {c['threshold']}" for name, c in gate["checks"].items() if not c["passed"]]
        print(f"gate: {gate['decision']}" + (f" ({'; '.join(failed)})" if failed else ""))
    if package_path.is_file():
        pkg = read_json(package_path)
        if pkg["decision"] == "rejected":
            print(f"package: rejected, production stays {pkg.get('production') or '(none)'}")
        else:
            note = " PROVISIONAL (no production model yet; the next model that passes the gate replaces it)" \
                if pkg["decision"] == "provisional" else ""
            print(f"package: {pkg['tag']} is production{note}; serve it with `srec serve`")


if __name__ == "__main__":
    main()
