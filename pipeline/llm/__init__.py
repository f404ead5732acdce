"""The LLM layer: base model loading, prompts, LoRA fine-tuning and decoding."""
