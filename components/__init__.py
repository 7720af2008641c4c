"""LLM-SRec pipeline."""
