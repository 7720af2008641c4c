"""Recommenders behind one interface (see base.py): the popularity baseline and SASRec.

LLM-SRec, built on an LLM, lives in components/llm/; a checkpoint of any of them loads with
components.llm.checkpoints.load_checkpoint.
"""

from components.models.base import Recommender, read_checkpoint_meta
from components.models.popularity import Popularity
from components.models.sasrec import SASRec, SASRecConfig

__all__ = ["Recommender", "read_checkpoint_meta", "Popularity", "SASRec", "SASRecConfig"]
