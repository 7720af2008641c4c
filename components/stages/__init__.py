"""The pipeline's stages: one module per stage of `dvc.yaml`, named as the stage is.

Data flows through them in this order; each module's `main()` reads its own `params.yaml` section and
takes every path from its command line (`python -m components.stages.<stage> --help`), and writes what
differs between two runs on the same inputs (durations, host) only to its run record `--timings`
(components/timings.py), never into a DVC output:

- `ingest_batches`: the landing zone -> the raw batch store `data/batches/` (a DVC output, so versioned)
- `ingest`: the configured source plus the raw batch store -> `data/ingested/` (canonical Parquet)
- `validate`: Great Expectations on the ingested rows -> `data/validated/`, `data/quarantine/`
- `prepare`: k-core, leave-last-out splits, fixed 1+99 candidates -> `data/prepared/`
- `pretrain_sasrec`: the SASRec teacher -> `models/sasrec/`
- `distill`: LLM-SRec's adapters on the frozen LLM and SASRec -> `models/llmsrec/`
- `evaluate`: NDCG@10/HR@10 of every model -> `reports/metrics.json`
- `gate`: release checks, champion/challenger, and the release decision -> `reports/gate.json`
- `report`: one self-contained HTML page of the run (data, drift, curves, metrics, gate, versions, params
  against the champion) -> `reports/run_report.html`
- `package`: carries out that decision: a versioned BentoML model with the run report as its model card, promoted (or
  provisional) -> the model store

The rest of `components/` is libraries the stages share (config, data, models, llm, evaluation, serving),
which never import a stage, and `orchestration/`, which drives the stages from Airflow.
"""
