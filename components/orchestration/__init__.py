"""Orchestration: what the Airflow DAG `llm_srec_retraining` (dags/) runs.

The DAG file stays thin; the logic lives here so it can be tested and run without Airflow:
`graph` (the DVC stage graph the DAG mirrors),
`runner` (one DVC stage, with the repository lock and an error a user can act on), `release`
(warm start, the gate decision, rejection, serving reload, the run summary, notifications). Its
settings are params.yaml's `orchestration:` section (`components.config.OrchestrationParams`).

`exchange` (a stage on a worker that shares no folder: DVC remote and git branch), `stack` (a real Airflow
deployment on this machine: Redis, scheduler, Celery workers in checkouts of their own), `kubernetes` (each
task's pod, rendered without a cluster), `pools` (the Airflow pools the DAG names).

`kfp` builds the same stages as a Kubeflow Pipelines v2 pipeline (`python -m components.orchestration.kfp`),
whose components run `kfp_step` in a workspace of their own.

`code_deps` is for developers and CI, not the DAG: it derives each stage's code deps in dvc.yaml from
the stage's imports (`python -m components.orchestration.code_deps --check | --write`).
"""
