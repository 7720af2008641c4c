"""Run the DAG once with `dag.test()` (no scheduler) and write the run's state and task states as JSON.

Used by the end-to-end test in a subprocess, so each run gets Airflow's process-wide settings from
its own environment: `python -m tests.dags.run_dag OUT.json`, in the workspace, with AIRFLOW_* set.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag = bag.dags["llm_srec_retraining"]
    t0 = time.time()
    run = dag.test()
    tis = run.get_task_instances()
    out.write_text(json.dumps({"state": str(run.state), "run_id": run.run_id, "seconds": round(time.time() - t0, 1),
                               "tasks": {ti.task_id: str(ti.state) for ti in tis}}, indent=2))


if __name__ == "__main__":
    main()
