"""Serving: the HTTP contract (schema.py), scoring (scorer.py), settings (settings.py), the BentoML services
(service.py), the packaged model (packaged.py, integrity.py) and the registry (registry.py)."""
