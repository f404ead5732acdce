"""Hybrid fine-tuning + RAG update strategy for LLM-powered interest exploration."""
from pathlib import Path

# The repository root (conf/, params.yaml, dvc.yaml): here, where nothing else is imported, so a
# module that needs it does not depend on the config code.
ROOT = Path(__file__).resolve().parent.parent
