"""Data layer: sources, the canonical schema, preprocessing."""
