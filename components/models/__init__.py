"""Recommenders behind one interface (see base.py). Importing this package registers the built-in models."""

from components.models.base import Batch, Histories, Recommender, load_checkpoint, read_checkpoint_meta
from components.models.popularity import Popularity
from components.models.sasrec import SASRec, SASRecConfig

__all__ = ["Batch", "Histories", "Recommender", "load_checkpoint", "read_checkpoint_meta", "Popularity", "SASRec",
           "SASRecConfig"]
