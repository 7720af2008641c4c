"""The Airflow operator for one DVC stage. Imported by the DAG only (it needs Airflow)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from components.io import read_json
from components.orchestration.runner import StageFailed, StageInputError, run_stage


class DvcStageOperator(BaseOperator):
    """`dvc repro -s <stage>` in the repository. Returns {stage, ran, changed, seconds} (an XCom).

    A stage that rejects its input ("ERROR [stage] ...") fails without retries: the same input fails
    the same way. Anything else (a crash, an OOM kill, a lock) is retried with backoff. `record`: the
    stage's run record (its `--timings` file in dvc.yaml, components/timings.py); when this attempt
    wrote it, it is passed on as the XCom `record`, also when the stage failed (the landing's outcome
    of a rejected batch is in it).
    """

    template_fields = ("stage",)
    ui_color = "#d8e8f8"

    def __init__(self, *, stage: str, repo: str, record: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.repo = repo
        self.record = record

    def execute(self, context) -> dict:
        started = time.time()
        try:
            return run_stage(Path(self.repo), self.stage, log=self.log.info)
        except StageInputError as e:
            raise AirflowFailException(f"{e} (not retried: fix the input or params, then clear this task)") from None
        except StageFailed as e:
            raise RuntimeError(str(e)) from None
        finally:
            path = Path(self.repo) / self.record if self.record else None
            # Older than this attempt: DVC stopped before the stage ran (a lock), and it is the last run's.
            if path is not None and path.is_file() and path.stat().st_mtime >= started - 1:
                context["ti"].xcom_push(key="record", value=read_json(path))
