"""Decoding: greedy free text, batched by prompt length (DESIGN.md section 6)."""
from __future__ import annotations

import torch
from rich.progress import Progress


@torch.inference_mode()
def greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy continuations of `prompts`, cut at EOS, in the order given.

    Prompts are batched by token length with left padding, so a batch wastes little on pads."""
    encoded = [tokenizer(p, add_special_tokens=False).input_ids for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (len(encoded[i]), i))
    out: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    with Progress(transient=True) as bar:
        task = bar.add_task("greedy decoding", total=len(prompts))
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(encoded[i]):] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]):] = 1
            ids, mask = ids.to(model.device), mask.to(model.device)
            generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                       do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
            for row, i in enumerate(batch):
                out[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True)
            bar.update(task, advance=len(batch))
    return out
