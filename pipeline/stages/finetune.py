"""finetune: curate [(c1, c2) -> c_next] samples from the training window; fit a LoRA adapter."""
from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline import db, kernels, retrieval, timing
from pipeline.data import contract
from pipeline.files import atomic_path, sha256, write_metrics, write_parquet
from pipeline.llm import lora, model, prompts
from pipeline.period import windows


def curate(rows: pd.DataFrame, samples_per_pair: int, seed: int) -> pd.DataFrame:
    """Per pair, samples_per_pair (day, c_next) draws with probability proportional to the count.

    Every eligible pair gives the same number of samples, so a few head pairs cannot dominate;
    `rows` must come sorted (finetune_rows.sql) for the draws to be reproducible."""
    rng = np.random.default_rng([seed, 0])
    picked = []
    for _, group in rows.groupby(["c1", "c2"], sort=True):
        weights = group["n"].to_numpy(dtype=float)
        picked.append(group.iloc[np.sort(rng.choice(len(group), size=samples_per_pair, p=weights / weights.sum()))])
    return pd.concat(picked, ignore_index=True)[["day", "c1", "c2", "c_next"]]


def rag_chosen(samples: pd.DataFrame, ft: DictConfig) -> np.ndarray:
    """The seeded rag_share of the samples whose prompts are RAG prompts."""
    return np.random.default_rng([ft.seed, 1]).random(len(samples)) < ft.rag_share


def with_rag(con, daily: Path, samples: pd.DataFrame, ft: DictConfig, min_support: int) -> pd.Series:
    """The retrieved successors (followed at least min_support times) for a seeded share of the
    samples, from days before each sample's own."""
    chosen = rag_chosen(samples, ft)
    days = sorted(pd.to_datetime(samples.loc[chosen, "day"]).dt.date.unique())
    found = retrieval.successors(con, daily, days, ft.rag_window_days, ft.rag_top_n)
    retrieved = retrieval.attach(samples, found, "day", min_support)
    return retrieved.where(chosen, pd.Series([[]] * len(samples), index=samples.index))


def with_popular(con, daily: Path, samples: pd.DataFrame, ft: DictConfig, popular_n: int) -> pd.Series:
    """The popular line of the same RAG share of the samples: the popular_n clusters most reached in
    [day - rag_window_days, day) before each sample's own day, as the tables' popular line is
    dated at their refresh date (empty everywhere when popular_n is 0)."""
    chosen = rag_chosen(samples, ft) if popular_n else np.zeros(len(samples), dtype=bool)
    days = sorted(pd.to_datetime(samples.loc[chosen, "day"]).dt.date.unique())
    found = retrieval.popular(con, daily, days, ft.rag_window_days, popular_n) if days else None
    by_day = {} if found is None else {d.date(): p for d, p in zip(found.refresh_date, found.popular)}
    return pd.Series([by_day.get(d, []) if c else [] for d, c in zip(pd.to_datetime(samples.day).dt.date, chosen)],
                     index=samples.index)


def texts(samples: pd.DataFrame, names: dict[int, str]) -> tuple[list[str], list[str]]:
    built = [prompts.for_pair(names, a, b, rag, popular)
             for a, b, rag, popular in zip(samples.c1, samples.c2, samples.retrieved, samples.popular)]
    return built, [prompts.answer(names[c]) for c in samples.c_next]


def run(cfg: DictConfig) -> None:
    torch.set_num_threads(cfg.torch_threads)
    ft, w = cfg.finetune, windows(cfg)
    daily = Path(cfg.paths.daily_counts)
    con = db.connect(cfg)
    rows = con.execute(db.sql("finetune_rows"), {"daily": str(daily), "train_start": w.train_start,
                                                  "test_start": w.test_start,
                                                  "min_support": ft.min_pair_support}).df()
    if rows.empty:
        raise ValueError(f"{daily}: no pair has finetune.min_pair_support={ft.min_pair_support} triples in "
                         f"[{w.train_start}, {w.test_start}); is period.month={cfg.period.month} inside the data?")
    samples = curate(rows, ft.samples_per_pair, ft.seed)
    samples["retrieved"] = with_rag(con, daily, samples, ft, cfg.prompts.min_support)
    samples["popular"] = with_popular(con, daily, samples, ft, cfg.prompts.popular_n)
    names = contract.descriptions(cfg.data.path)
    samples["prompt"], samples["answer"] = texts(samples, names)

    base, tokenizer = model.load(cfg.model)
    # Checkpoints belong to exactly these samples, settings and training code; anything else starts afresh.
    key = hashlib.sha256(pd.util.hash_pandas_object(samples.drop(columns=["retrieved", "popular"])).values.tobytes()
                         + OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["finetune", "model"])).encode()
                         + Path(lora.__file__).read_bytes())
    ckpt_dir = Path(cfg.paths.checkpoints) / f"finetune-{key.hexdigest()[:16]}"
    log_dir = Path(cfg.paths.metrics) / "finetune"
    began = time.perf_counter()
    where = kernels.device(cfg.device)
    adapter, stats = lora.train(base, tokenizer, samples["prompt"].tolist(), samples["answer"].tolist(), ft,
                                ckpt_dir, log_dir, accelerator="gpu" if where == "cuda" else "cpu")
    wall = time.perf_counter() - began
    with atomic_path(cfg.paths.adapter) as tmp:
        adapter.save_pretrained(tmp)
        lora.normalise_config(tmp / "adapter_config.json")
        adapter_sha = sha256(tmp / "adapter_model.safetensors")
    write_parquet(samples, cfg.paths.samples)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    seen = stats["steps"] * ft.batch_size
    # Whether a checkpoint was picked up depends on what an earlier run left: a run record, not a metric.
    timing.note(train_s=round(wall, 1), samples_per_s=round(seen / wall, 2), resumed=stats.pop("resumed"))
    write_metrics(cfg.paths.metrics, "finetune", {
        **stats, "pairs": int(samples.groupby(["c1", "c2"]).ngroups), "rag_samples": int(samples.retrieved.map(bool).sum())},
        {"train_window": [str(w.train_start), str(w.test_start)], "adapter_sha256": adapter_sha, **kernels.lineage(where),
         "base_model_sha256": model.identity(cfg.model), "template_sha256": prompts.TEMPLATE_HASH})
    print(f"finetune: {len(samples)} samples over {stats['steps']} steps in {wall:.0f}s "
          f"({seen / wall:.1f} samples/s), final loss {stats['final_loss']:.3f}")
