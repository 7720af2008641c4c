"""The Airflow operator for one DVC stage. Imported by the DAG only (it needs Airflow)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from components.config import ExchangeParams
from components.io import read_json
from components.orchestration import exchange, graph, release
from components.orchestration.runner import StageFailed, StageInputError, run_stage


class DvcStageOperator(BaseOperator):
    """`dvc repro -s <stage>` in the repository. Returns {stage, ran, changed, seconds} (an XCom).

    A stage that rejects its input ("ERROR [stage] ...") fails without retries: the same input fails
    the same way. Anything else (a crash, an OOM kill, a lock) is retried with backoff. `record`: the
    stage's run record (its `--timings` file in dvc.yaml, components/timings.py); when this attempt
    wrote it, it is passed on as the XCom `record`, also when the stage failed (the landing's outcome
    of a rejected batch is in it). Why a failed attempt failed is the XCom `error`.

    `exchange` (orchestration.exchange as a dict, when its `dvc_remote` is set): the worker shares no folder
    with the others, so the task syncs its checkout from the exchange branch, pulls its inputs from the DVC
    remote and publishes what it wrote (components/orchestration/exchange.py); the XCom adds `commit` and
    `checkout`. `warm_start` (orchestration.warm_start, with `exchange` and for a stage that trains from a
    staged checkpoint): its checkpoint is staged in this checkout, after the pull, as prepare_warm_start does on
    one machine; what was staged is the XCom `warm_start`.
    """

    template_fields = ("stage",)
    ui_color = "#d8e8f8"

    def __init__(self, *, stage: str, repo: str, record: str | None = None, exchange: dict | None = None,
                 warm_start: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self.repo = repo
        self.record = record
        self.exchange = exchange
        self.warm_start = warm_start

    def execute(self, context) -> dict:
        started = time.time()
        ti = context["ti"]
        try:
            if self.exchange is None:
                return run_stage(Path(self.repo), self.stage, log=self.log.info)
            return self._run_exchanged(context)
        except StageInputError as e:
            ti.xcom_push(key="error", value=str(e))
            raise AirflowFailException(f"{e} (not retried: fix the input or params, then clear this task)") from None
        except StageFailed as e:
            ti.xcom_push(key="error", value=str(e))
            raise RuntimeError(str(e)) from None
        finally:
            path = Path(self.repo) / self.record if self.record else None
            # Older than this attempt: DVC stopped before the stage ran (a lock), and it is the last run's.
            if path is not None and path.is_file() and path.stat().st_mtime >= started - 1:
                ti.xcom_push(key="record", value=read_json(path))

    def _run_exchanged(self, context) -> dict:
        repo, cfg = Path(self.repo), ExchangeParams(**self.exchange)
        stages = graph.pipeline_stages(repo)  # read once: the warm start below needs them too
        stage = next((s for s in stages if s.address == self.stage), None)
        if stage is None:
            raise StageInputError(f"ERROR [exchange] {repo}/dvc.yaml has no stage {self.stage!r}: this worker's "
                                  "checkout is not the scheduler's (deploy the same commit to every worker)")
        before = None
        if self.warm_start is not None:
            def before(r: Path) -> dict:
                info = release.stage_warm_start(r, stages, self.warm_start, log=self.log.info, only=self.stage)
                context["ti"].xcom_push(key="warm_start", value=info)
                return info
        message = f"{self.stage}: {context['run_id']} (try {context['ti'].try_number})"
        return exchange.run_exchanged(repo, stage, cfg, message, before=before, log=self.log.info)
