"""Serving: the packaged model (packaged.py) and the BentoML service (service.py)."""
