"""Hybrid fine-tuning + RAG update strategy for LLM-powered interest exploration."""
