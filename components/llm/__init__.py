"""The frozen LLM side of LLM-SRec: backbone loading, prompts, the distilled model, and checkpoints.py,
which loads a checkpoint of any model (this is the lowest layer that sees every model class).

Importable without the orchestration stack (no dvc, GX, bentoml, airflow imports), so it runs on a
bare GPU worker that has only torch and transformers.
"""
