"""What the portable kernel pin costs: fine-tune samples/s and decode prompts/s, pinned against native.

    python -m benchmarks.kernels.run [--steps 12] [--prompts 128]

Each setting runs in its own process (the pin is read when torch is imported), on the default base
model (`bin/setup` prepares it) and the default world's descriptions: --steps LoRA steps of the
default fine-tune's LoRA (`finetune.lora`, batch 16, every layer run each step, prompts of the
default template) and bulk decoding of --prompts base prompts. Prints each rate, the ratio
pinned/native, and the CPU.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import cpu

ROOT = Path(__file__).resolve().parents[2]


def measure(mode: str, steps: int, n_prompts: int) -> dict:
    """In this process: pin `mode`, then time the two workloads."""
    from pipeline import config, kernels

    kernels.pin(mode)
    import torch

    from pipeline.data import contract
    from pipeline.llm import bulk, lora, model, prompts

    cfg = config.load()
    torch.set_num_threads(int(cfg.torch_threads))
    names = contract.descriptions(cfg.data.path)
    pairs = [(a, b) for a in names for b in names if a != b][:n_prompts]
    texts = [prompts.for_pair(names, a, b) for a, b in pairs]
    llm, tokenizer = model.load(cfg.model)
    trie = bulk.Trie.build(tokenizer, names)
    began = time.perf_counter()
    bulk.answers(llm, tokenizer, texts, trie, bulk.Settings(False, int(cfg.bulk_infer.max_new_tokens),
                                                           int(cfg.bulk_infer.batch_size.cpu)))
    decode = len(texts) / (time.perf_counter() - began)

    train, tokenizer = model.load(cfg.model)
    peft_model = lora.wrap(train, cfg.finetune.lora).train()
    batch_size = int(cfg.finetune.batch_size)
    samples = lora.encode(tokenizer, texts[:batch_size], [prompts.answer(names[(a + b) % len(names)])
                                                          for a, b in pairs[:batch_size]])
    batch = lora.collate(tokenizer.pad_token_id)(samples)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-3)
    began = time.perf_counter()
    for _ in range(steps):
        loss = peft_model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    finetune = steps * batch_size / (time.perf_counter() - began)
    return {"mode": mode, "device_class": kernels.device_class(), "finetune_samples_per_s": round(finetune, 2),
            "decode_prompts_per_s": round(decode, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernels.run", description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--child", choices=("portable", "native"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps, args.prompts)))
        return
    print(f"CPU: {cpu()}")
    found = {}
    for mode in ("native", "portable"):
        done = subprocess.run([sys.executable, "-m", "benchmarks.kernels.run", "--child", mode, "--steps",
                               str(args.steps), "--prompts", str(args.prompts)], cwd=ROOT, capture_output=True,
                              text=True, check=True)
        found[mode] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {mode:<9} {found[mode]['device_class']:<20} fine-tune {found[mode]['finetune_samples_per_s']:>6.2f} "
              f"samples/s   decode {found[mode]['decode_prompts_per_s']:>6.2f} prompts/s", flush=True)
    for key, label in (("finetune_samples_per_s", "fine-tune"), ("decode_prompts_per_s", "decode")):
        print(f"{label}: portable / native = {found['portable'][key] / found['native'][key]:.2f}x")


if __name__ == "__main__":
    main()
