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


if __name__ == "__main__":
    main()
