"""
### llm_srec_retraining: retrain LLM-SRec when new interactions arrive, release it only through the gate

**Schedule: {schedule}** (`params.yaml` → `orchestration.schedule` and `trigger_on_batch`). A batch lands
when the triggerer sees the sentinel `data/incoming/_READY` and updates the Asset `llm_srec_landing_zone`
(`python -m components.data.landing drop FILE` writes the batch and the sentinel). The UI header's Schedule
field shows the Asset only, so the cron is in the DAG's title (its display name), here, in its description and
in `airflow dags details` (`timetable_summary`).

**Tasks**

1. One task per DVC stage in `dvc.yaml`, wired by the stages' deps and outs (direct edges only: an order
   already implied by a longer path is not drawn again, components/orchestration/graph.py), each running
   `dvc repro -s <stage>`: DVC skips what has not changed, so reruns and retries are idempotent.
   Adding a stage to `dvc.yaml` adds a task here. They share the 1-slot pool `dvc` (DVC's repo lock);
   `distill` goes to queue `gpu` and pool `gpu` (`orchestration.tasks`). The first is the stage that
   writes the raw store `data/batches/`, `ingest_batches`: it moves complete files from
   `data/incoming/` into the store (atomic rename, de-duplicated by SHA-256, validated on its own; a
   batch with too many bad rows is rejected into `data/landing/rejected/` with its quarantined rows,
   and the run fails here). As a DVC stage's output the store is versioned with the rest.
2. `prepare_warm_start`, once the store is up to date and before the other stages: stages the
   production model's SASRec and LLM-SRec adapters (or the previous checkpoints) so `pretrain_sasrec` and
   `distill` continue from them; known items keep their SASRec embeddings, new items start fresh (and reach
   the adapters through them). Each staged folder is a dependency of its stage, so `dvc.lock` records what
   training started from.
3. `check_gate`: reads the gate's decision in `reports/gate.json` (the gate stage decides, and logs a
   rejection in the registry); promoted or provisional → the stages after the gate (`report`, then
   `package`: save to BentoML with the report as model card, and promote) → `reload_serving`; rejected →
   `mark_rejected` (log, notify callback) and the run report (`orchestration.run_report`) all the same.
4. `run_summary`: always runs; writes `reports/runs/<run>/summary.json`, notifies, and fails the run
   if any task failed. A failed or rejected run leaves the production model as it was.

**Workers that share no folder** (`orchestration.exchange.dvc_remote` set: Celery workers on several machines,
Kubernetes pods): each stage's task syncs its own checkout from the git branch `exchange.git_branch`, pulls
what it reads from the DVC remote, runs, then pushes its outputs and commits its dvc.lock entry to the branch
(components/orchestration/exchange.py); each training stage stages its own warm start.

Configuration: `params.yaml` → `orchestration`. Setup, pools and engines: docs/airflow.md, docs/deploy.md. Under the
KubernetesExecutor each task is a pod of `orchestration.image` (components/orchestration/kubernetes.py).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.triggers.file import FileDeleteTrigger
from airflow.sdk import (
    DAG,
    Asset,
    AssetOrTimeSchedule,
    AssetWatcher,
    CronTriggerTimetable,
    TriggerRule,
    get_current_context,
    task,
)
from airflow.sdk.exceptions import AirflowFailException

from components.config import load_params
from components.errors import ConfigError
from components.orchestration import exchange, graph, release
from components.orchestration.kubernetes import POD_FIELDS, executor_config
from components.orchestration.operators import DvcStageOperator
from components.orchestration.runner import repo_lock

# The repository this DAG drives: the folder above dags/, or $LLMSREC_REPO when the DAG file is
# deployed elsewhere (e.g. a dags folder that only holds a copy).
REPO = Path(os.environ.get("LLMSREC_REPO") or Path(__file__).resolve().parents[1]).resolve()
CFG = load_params(REPO / "params.yaml").orchestration  # the whole file is checked: a typo anywhere fails here
STAGES = graph.pipeline_stages(REPO)
LANDING = CFG.landing
ORCHESTRATION_TASKS = ("prepare_warm_start", "check_gate", "mark_rejected", "reload_serving", "run_summary")

if clash := sorted({s.task_id for s in STAGES} & set(ORCHESTRATION_TASKS)):
    raise ConfigError(REPO / "dvc.yaml", f"stage(s) {clash} share a name with the DAG's own tasks",
                      "rename the stage(s)")
STORE_READERS = graph.reads(STAGES, LANDING.store)
if not STORE_READERS:
    raise ConfigError(REPO / "params.yaml", f"orchestration.landing.store ({LANDING.store}) is not a dependency "
                      "of any dvc.yaml stage, so accepted batches would never reach training",
                      "add it to the ingest stage's deps and command (--batches), or fix the path")
STORE_WRITER = graph.writer_of(STAGES, LANDING.store)
if STORE_WRITER is None:
    raise ConfigError(REPO / "params.yaml", f"orchestration.landing.store ({LANDING.store}) is the output of no "
                      "dvc.yaml stage, so accepted batches would not be versioned (`dvc push` would not send them)",
                      "restore the ingest_batches stage (its `--store` and `outs`), or fix the path")
GATE_STAGE = graph.writer_of(STAGES, CFG.gate_report)
if GATE_STAGE is None:
    raise ConfigError(REPO / "params.yaml", f"orchestration.gate_report ({CFG.gate_report}) is written by no "
                      "dvc.yaml stage, so no run could ever be judged or released",
                      "point it at the gate stage's report (reports/gate.json), or restore the gate stage")
# The run report (orchestration.run_report) is written for every judged run, released or not: a rejected run
# is the one an operator most needs to read. Its stage follows the gate stage as DVC wires it, not the branch
# (Airflow never skips what comes after a followed branch, so the branch must not lead to it).
JUDGED_STAGES = graph.judged_stages(STAGES, GATE_STAGE, CFG.run_report)
RELEASE_STAGES = [s for s in graph.downstream(STAGES, GATE_STAGE) if s not in JUDGED_STAGES]
REPORT_STAGE = graph.writer_of(STAGES, CFG.run_report) if CFG.run_report else None
# Workers that share no folder (orchestration.exchange): each stage's task syncs its own checkout, pulls
# from and pushes to the DVC remote; the stage that trains from the staged warm start stages it itself.
EXCHANGE = CFG.exchange.model_dump() if CFG.exchange.dvc_remote else None
TRAINERS = release.warm_start_stages(STAGES)  # pretrain_sasrec and distill: each continues from a staged checkpoint


def _schedule():
    """Cron, the landing-zone Asset, both, or neither (manual runs only)."""
    cron = CronTriggerTimetable(CFG.schedule, timezone="UTC") if CFG.schedule else None
    if not CFG.trigger_on_batch:
        return cron
    ready = REPO / LANDING.incoming / LANDING.ready_file
    # The triggerer polls for the sentinel asynchronously (no worker slot is held) and deletes it when
    # it fires; it never touches the batches themselves.
    landing = Asset(name="llm_srec_landing_zone", uri=(REPO / LANDING.incoming).as_uri(),
                    watchers=[AssetWatcher(name="llm_srec_landing_ready",
                                           trigger=FileDeleteTrigger(filepath=str(ready),
                                                                     poke_interval=LANDING.poll_seconds))])
    return AssetOrTimeSchedule(timetable=cron, assets=landing) if cron else landing


def _schedule_text(short: bool = False) -> str:
    """The schedule in words, for the DAG's title, description and doc: the UI header's Schedule field shows
    the Asset of an AssetOrTimeSchedule and not its cron. `short`: plain text, without the cron in words."""
    from cron_descriptor import ExpressionDescriptor, Options

    words = []
    if CFG.schedule:
        options = Options()
        options.use_24hour_time_format = True
        words.append(f"cron {CFG.schedule} UTC" if short else
                     f"cron `{CFG.schedule}` UTC ({ExpressionDescriptor(CFG.schedule, options).get_description()})")
    if CFG.trigger_on_batch:
        words.append("a landed batch" if short else "a landed batch (Asset `llm_srec_landing_zone`)")
    return " or ".join(words) or "manual runs only"


def _sync_checkout(best_effort: bool = False) -> None:
    """Under orchestration.exchange, bring this worker's checkout to the branch's tip before reading what the
    stages wrote (the gate's report, the metrics): the stage may have run on another machine. `best_effort`:
    a failure is printed, not raised (the run summary must be written even when git is unreachable)."""
    if EXCHANGE is None:
        return
    try:
        with repo_lock(REPO):
            exchange.sync(REPO, CFG.exchange, log=print)
    except Exception as e:  # noqa: BLE001 - StageFailed, StageInputError, OSError: reported, then the local copy
        if not best_effort:
            raise
        print(f"summary: could not sync {REPO} with {CFG.exchange.git_remote}/{CFG.exchange.git_branch} ({e}); "
              "the metrics below are this checkout's")


def _run_id() -> str:
    return get_current_context()["run_id"]


def _record_failure(context) -> None:
    """Every task's failure reason is kept for the summary (tasks may run on different workers)."""
    ti = context["ti"]
    release.record_error(REPO, context["run_id"], ti.task_id, context.get("exception"))


with DAG(
    dag_id="llm_srec_retraining",
    description=f"Retrain SASRec + LLM-SRec on new interaction batches; promote only through the gate. "
                f"Runs on {_schedule_text(short=True)}",
    doc_md=__doc__.replace("{schedule}", _schedule_text()),
    # The header's Schedule field draws only the Asset of an AssetOrTimeSchedule; the title carries the cron.
    dag_display_name=f"llm_srec_retraining · {_schedule_text(short=True)}",
    schedule=_schedule(),
    start_date=CFG.start_datetime,
    catchup=False,
    max_active_runs=1,
    tags=["llm-srec", "retraining", "dvc", "bentoml"],
    default_args={
        "owner": "mlops",
        "retries": CFG.retries,
        "retry_delay": timedelta(seconds=CFG.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(seconds=CFG.max_retry_delay_seconds),
        "on_failure_callback": _record_failure,
        # KubernetesExecutor: every task's pod runs orchestration.image with the DVC remote; other executors ignore it.
        "executor_config": executor_config(CFG),
    },
) as dag:

    @task
    def prepare_warm_start() -> dict:
        """Stage what training continues from, once the raw store is up to date and before any other stage.

        Puts the checkpoint each trainer (`pretrain_sasrec`, `distill`) continues from where it reads its warm
        start (`orchestration.warm_start`: `champion`, the production model's SASRec and adapters, else the
        previous checkpoints; `previous`; or `none`): known items keep their SASRec embeddings, new items start
        fresh.
        Each staged folder is a DVC dependency of its stage, so `dvc.lock` records what training started from.
        Under `orchestration.exchange` each trainer stages its own, in its own checkout, and this task only
        records the production tag. XCom: what was staged, and `production_before` (the tag the run started
        with, for the run summary)."""
        if EXCHANGE is not None and TRAINERS:
            # This worker's checkout is not the ones the trainers run in: each stages there, after its pull.
            print(f"warm start: staged by {', '.join(t.task_id for t in TRAINERS)} in their own checkouts "
                  "(orchestration.exchange)")
            info = {"mode": CFG.warm_start, "staged_by": [t.task_id for t in TRAINERS], "stages": {}}
        else:
            info = release.stage_warm_start(REPO, STAGES, CFG.warm_start, log=print)
        return {**info, "production_before": release.production_tag()}

    @task.branch
    def check_gate() -> list[str]:
        """Follow the gate's decision in `orchestration.gate_report` (`reports/gate.json`); decide nothing itself.

        Promoted or provisional (a first model released although a check failed): the stages after the gate
        that release the model (`package`), then `reload_serving`. Rejected: `mark_rejected`; production stays
        as it was. Prints every check with its value and threshold; the decision is the XCom `decision`. A
        report without a decision fails this task, naming the file and the fix."""
        _sync_checkout()
        decision = release.gate_decision(REPO, CFG.gate_report)
        # Read once per run: mark_rejected and the summary take it from here.
        get_current_context()["ti"].xcom_push(key="decision", value=decision)
        print(f"gate: {decision['reason']}")
        for name, c in decision.get("checks", {}).items():
            print(f"  {'ok  ' if c.get('passed') else 'FAIL'} {name}: {c.get('value')} "
                  f"(threshold {c.get('threshold')})")
        if decision["release"]:
            return [s.task_id for s in RELEASE_STAGES] or ["reload_serving"]
        return ["mark_rejected"]

    @task
    def mark_rejected() -> dict:
        """Record a rejected run: log the gate's reason and failed checks and call `orchestration.notify_callback`.

        Runs only when `check_gate` follows the rejection. The gate stage already wrote the rejection into the
        registry's history; production is untouched. XCom: {outcome, run_id, reason, failed_checks,
        production}."""
        # The decision check_gate read; the gate stage already logged the rejection in the registry's history.
        decision = get_current_context()["ti"].xcom_pull(task_ids="check_gate", key="decision")
        production = release.production_tag()
        record = {"outcome": "rejected", "run_id": _run_id(), "reason": decision["reason"],
                  "failed_checks": decision["failed_checks"], "production": production}
        print(f"REJECTED: {decision['reason']}. Production stays {production or 'empty'}.")
        release.notify(CFG.notify_callback, record, log=print)
        return record

    @task
    def reload_serving() -> dict:
        """Point the running service at the new production model: run `orchestration.serving_reload_command`
        with the production tag, after `package` promoted it. Skipped when the gate rejected the run; a failing
        reload fails the run, and its summary says production has changed."""
        return release.reload_serving(CFG.serving_reload_command, release.production_tag(), log=print)

    @task(trigger_rule=TriggerRule.ALL_DONE, retries=0)
    def run_summary() -> dict:
        """Always runs (trigger rule all_done): the run's record in `reports/runs/<run_id>/summary.json`.

        Every task's state, each stage's outcome (ran, changed), the landing, the warm start, the gate's
        decision, production before and after, the headline metrics, the run report, and each failure's
        reason; notifies `orchestration.notify_callback` for a failed, promoted or provisional run. It fails
        when any task failed, so Airflow never marks a broken run a success."""
        _sync_checkout(best_effort=True)
        ctx = get_current_context()
        ti, run_id = ctx["ti"], ctx["run_id"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id])
        states = {t: str(s) for t, s in (states.get(run_id, states) or {}).items() if t != ti.task_id}
        pulled = {s.task_id: ti.xcom_pull(task_ids=s.task_id) for s in STAGES}
        warm = ti.xcom_pull(task_ids="prepare_warm_start") or {}
        for trainer in warm.get("staged_by") or []:
            warm.setdefault("stages", {}).update((ti.xcom_pull(task_ids=trainer, key="warm_start") or {}).get("stages") or {})
        # The landing's outcome is in the store writer's run record, which its task passes on even when it fails.
        landing = (ti.xcom_pull(task_ids=STORE_WRITER.task_id, key="record") or {}).get("landing") or {}
        decision = None
        if states.get("check_gate") == "success":
            decision = ti.xcom_pull(task_ids="check_gate", key="decision")
        before = warm.get("production_before")
        after = release.production_tag()
        # Whether a stage changed what dvc.lock records, not whether it ran: ingest_batches runs every time.
        changed = {t: bool(r and r.get("changed")) for t, r in pulled.items()}
        outcome, reason = release.outcome_of(states, changed, decision, before, after)
        record = {
            "run_id": run_id, "outcome": outcome, "reason": reason,
            "production_before": before, "production_after": after,
            "landing": landing, "warm_start": warm,
            "stages": {s.task_id: {"state": states.get(s.task_id), **(pulled[s.task_id] or {})} for s in STAGES},
            "tasks": states,
            "gate": {k: decision[k] for k in ("passed", "decision", "failed_checks", "reason")} if decision else None,
            "metrics": release.metrics_line(REPO),
            # This run's page, when its stage ran now (an older file may be there after a failure).
            "report": CFG.run_report if REPORT_STAGE and states.get(REPORT_STAGE.task_id) == "success" else None,
            # A stage's own account of its failure travels with the run (its worker may be another machine).
            "errors": {**{s.task_id: e for s in STAGES if (e := ti.xcom_pull(task_ids=s.task_id, key="error"))},
                       **release.read_errors(REPO, run_id)},
        }
        path = release.write_summary(REPO, run_id, record)
        for line in release.summary_lines(record):
            print(line)
        print(f"summary: {path}")
        if outcome in ("failed", "promoted", "provisional"):
            release.notify(CFG.notify_callback, record, log=print)
        if outcome == "failed":
            # The summary is a leaf: if it succeeded, Airflow would call a broken run a success.
            raise AirflowFailException(f"run failed: {reason}. Errors: {json.dumps(record['errors'])}")
        return record

    prepare_warm_start()
    check_gate()
    mark_rejected()
    reload_serving()
    run_summary()

    for stage in STAGES:
        routing = CFG.tasks.get(stage.address) or CFG.tasks.get(stage.task_id)
        opts = routing.model_dump(exclude_none=True, exclude=set(POD_FIELDS)) if routing else {}
        minutes = opts.pop("execution_timeout_minutes", None)
        DvcStageOperator(
            task_id=stage.task_id, stage=stage.address, repo=str(REPO), record=graph.option_of(stage, "--timings"),
            exchange=EXCHANGE, warm_start=CFG.warm_start if EXCHANGE is not None and stage in TRAINERS else None,
            pool=opts.pop("pool", CFG.dvc_pool), executor_config=executor_config(CFG, routing),
            execution_timeout=timedelta(minutes=minutes) if minutes else None,
            doc_md=graph.stage_doc(stage, REPO),
            **opts,
        )
    # Every order the run needs, as (upstream, downstream) task ids; only the direct ones are wired (below).
    tid = {s.address: s.task_id for s in STAGES}
    # The store is brought up to date first, so the warm start sees whether anything new arrived.
    order = [(STORE_WRITER.task_id, "prepare_warm_start")]
    for stage in STAGES:
        order += [(tid[up], stage.task_id) for up in stage.upstream]
        if stage is not STORE_WRITER and set(stage.upstream) <= {STORE_WRITER.address}:
            order.append(("prepare_warm_start", stage.task_id))

    release_ids = {s.address for s in RELEASE_STAGES}
    order += [(GATE_STAGE.task_id, "check_gate"), ("check_gate", "mark_rejected")]
    if RELEASE_STAGES:
        order += [("check_gate", s.task_id) for s in RELEASE_STAGES]
        order += [(s.task_id, "reload_serving") for s in RELEASE_STAGES
                  if not any(s.address in o.upstream for o in RELEASE_STAGES)]
    else:
        order.append(("check_gate", "reload_serving"))
    # Leaf stages that are neither the gate nor released by it (e.g. a report) end in the summary.
    others = [s.task_id for s in STAGES
              if s.address not in release_ids | {GATE_STAGE.address} and not any(s.address in o.upstream for o in STAGES)]
    # The run report feeds package, so it is no leaf; a rejected run's summary still waits for it.
    order += [(t, "run_summary") for t in ["mark_rejected", "reload_serving", *others, *(s.task_id for s in JUDGED_STAGES)]]

    # Wired (and drawn) without the edges a longer path already implies. A task that does not wait for all of
    # its upstream to succeed (run_summary: all_done) keeps every edge: a task on the longer path may end
    # early (check_gate skips package at once), and then only the direct edge makes it wait.
    tasks = {t.task_id: t for t in dag.tasks}
    waits_for_done = {t for t, task in tasks.items() if task.trigger_rule != TriggerRule.ALL_SUCCESS}
    for up, down in graph.direct_edges(order, keep_into=waits_for_done):
        tasks[up] >> tasks[down]
