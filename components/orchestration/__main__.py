"""`python -m components.orchestration pools [--apply]`: the Airflow pools the DAG expects.

The DAG names its pools in params.yaml (`orchestration.dvc_pool`, `orchestration.tasks.*.pool`);
a task whose pool does not exist is never scheduled, so create them once per Airflow installation.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from components.config import load_params
from components.errors import stage_main
from components.orchestration.pools import DESCRIPTIONS, pools


@stage_main("orchestration")
def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["pools"])
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--apply", action="store_true", help="run `airflow pools set` for each (else print the commands)")
    args = ap.parse_args(argv)
    for name, slots in pools(load_params(args.params).orchestration).items():
        cmd = ["airflow", "pools", "set", name, str(slots), DESCRIPTIONS.get(name, "llm_srec_retraining")]
        print(" ".join(cmd[:5]) + f' "{cmd[5]}"')
        if args.apply:
            subprocess.run([sys.executable, "-m", *cmd], check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
