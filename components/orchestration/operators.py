"""The Airflow operator for one DVC stage. Imported by the DAG only (it needs Airflow)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from components.orchestration.runner import StageFailed, StageInputError, run_stage


class DvcStageOperator(BaseOperator):
    """`dvc repro -s <stage>` in the repository. Returns {stage, ran, seconds} (an XCom).

    A stage that rejects its input ("ERROR [stage] ...") fails without retries: the same input fails
    the same way. Anything else (a crash, an OOM kill, a lock) is retried with backoff.
    """

    template_fields = ("stage",)
    ui_color = "#d8e8f8"

    def __init__(self, *, stage: str, repo: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.repo = repo

    def execute(self, context) -> dict:
        try:
            return run_stage(Path(self.repo), self.stage, log=self.log.info)
        except StageInputError as e:
            raise AirflowFailException(f"{e} (not retried: fix the input or params, then clear this task)") from None
        except StageFailed as e:
            raise RuntimeError(str(e)) from None
