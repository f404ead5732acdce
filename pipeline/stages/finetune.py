"""finetune: curate [(c1, c2) -> c_next] samples from the training window; fit a LoRA adapter."""
from __future__ import annotations

import hashlib
import shutil
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from pipeline import db, evidence, kernels, retrieval, timing
from pipeline.counting import top_labels, training_rows
from pipeline.data import contract
from pipeline.files import atomic_path, refuse_foreign, sha256, write_metrics, write_parquet
from pipeline.llm import lora, model, prompts
from pipeline.period import windows

# What finetune writes into paths.adapter: what `dvc checkout` restores there without the mark.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


def curate(rows: pd.DataFrame, ft: DictConfig, day) -> pd.DataFrame:
    """The line-free samples: samples_per_pair per pair, labelled by ft.labels.

    top: the pair's best successor over the training days by top_labels (ft.label_prior), dated
    `day` (the training days' end: the table it teaches serves the days after them); drawn:
    (day, c_next) draws with probability proportional to the count (seeded). Every eligible pair
    gives the same number of samples, so a few head pairs cannot dominate; `rows` must come sorted
    (training_rows.sql) for the draws to be reproducible."""
    if ft.labels == "top":
        top = top_labels(rows, ft.label_prior)
        top = top.loc[top.index.repeat(ft.samples_per_pair)].reset_index(drop=True)
        return top.assign(day=pd.Series(pd.Timestamp(day), index=top.index).astype(rows["day"].dtype))[
            ["day", "c1", "c2", "c_next"]]
    rng = np.random.default_rng([ft.seed, 0])
    picked = []
    for _, group in rows.groupby(["c1", "c2"], sort=True):
        weights = group["n"].to_numpy(dtype=float)
        picked.append(group.iloc[np.sort(rng.choice(len(group), size=ft.samples_per_pair, p=weights / weights.sum()))])
    return pd.concat(picked, ignore_index=True)[["day", "c1", "c2", "c_next"]]


def lined(con, daily: Path, w, ft: DictConfig, min_support: int, mode: str) -> pd.DataFrame:
    """Samples that teach the RAG lines as tables show them: on every ft.line_every_days-th day d of
    the training days whose label days [d, d + line_label_days) end by the held-out days, each pair
    followed by something there that has evidence at d gives one sample, labelled with the
    successor other than c1 it was followed by most often in the label days (ties to the lower id).
    The evidence is evidence.lines' under `mode`, over [d - rag_window_days, d): the pair's top
    rag_top_n successors followed at least min_support times, else (backoff) its last cluster's
    top successor. A refreshed table serves the days after its refresh, so a line is exactly as
    informative about the label as it is at serving, for the kinds of pair the tables serve."""
    columns = {"day": "datetime64[us]", "c1": "int32", "c2": "int32", "c_next": "int32"}
    last = w.test_start - timedelta(days=ft.line_label_days)
    if not ft.line_every_days or last < w.train_start:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in columns.items()}).assign(retrieved=[], last=[])
    days = [w.train_start + timedelta(days=k) for k in range(0, (last - w.train_start).days + 1, ft.line_every_days)]
    labels = db.over_dates(con, "finetune_lined", days, {"daily": str(daily), "label_days": ft.line_label_days})
    labels = labels.astype(columns)
    found = retrieval.successors(con, daily, days, ft.rag_window_days, ft.rag_top_n)
    after = evidence.last_successors(con, daily, days, ft.rag_window_days)
    labels["retrieved"], labels["last"] = evidence.lines(labels, "day", found, after, min_support, mode)
    return labels[labels.retrieved.map(bool) | labels["last"].map(bool)].reset_index(drop=True)


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


def with_popular(con, daily: Path, samples: pd.DataFrame, chosen: np.ndarray, ft: DictConfig,
                 popular_n: int) -> pd.Series:
    """The popular line of the `chosen` samples (the RAG ones): the popular_n clusters most reached
    in [day - rag_window_days, day) before each sample's own day, as the tables' popular line is
    dated at their refresh date (empty everywhere when popular_n is 0)."""
    chosen = chosen & bool(popular_n)
    days = sorted(pd.to_datetime(samples.loc[chosen, "day"]).dt.date.unique())
    found = retrieval.popular(con, daily, days, ft.rag_window_days, popular_n) if days else None
    by_day = {} if found is None else {d.date(): p for d, p in zip(found.refresh_date, found.popular)}
    return pd.Series([by_day.get(d, []) if c else [] for d, c in zip(pd.to_datetime(samples.day).dt.date, chosen)],
                     index=samples.index)


def texts(samples: pd.DataFrame, names: dict[int, str]) -> tuple[list[str], list[str]]:
    built = [prompts.for_pair(names, a, b, rag, popular, back) for a, b, rag, popular, back in
             zip(samples.c1, samples.c2, samples.retrieved, samples.popular, samples["last"])]
    return built, [prompts.answer(names[c]) for c in samples.c_next]


def run(cfg: DictConfig) -> None:
    refuse_foreign(cfg.paths.adapter, ADAPTER_FILES)  # before the fine-tune, not after it
    torch.set_num_threads(cfg.torch_threads)
    ft, w = cfg.finetune, windows(cfg)
    daily = Path(cfg.paths.daily_counts)
    con = db.connect(cfg)
    rows = training_rows(con, daily, w, ft.min_pair_support)
    if rows.empty:
        raise ValueError(f"{daily}: no pair has finetune.min_pair_support={ft.min_pair_support} triples in "
                         f"[{w.train_start}, {w.test_start}); is period.month={cfg.period.month} inside the data?")
    free = curate(rows, ft, w.test_start)
    free["retrieved"] = with_rag(con, daily, free, ft, cfg.prompts.min_support)
    free["popular"] = with_popular(con, daily, free, rag_chosen(free, ft), ft, cfg.prompts.popular_n)
    free["last"] = [[] for _ in range(len(free))]
    anchored = lined(con, daily, w, ft, cfg.prompts.min_support, cfg.prompts.evidence)
    anchored["popular"] = with_popular(con, daily, anchored, np.ones(len(anchored), dtype=bool), ft,
                                       cfg.prompts.popular_n)
    samples = pd.concat([free, anchored], ignore_index=True) if len(anchored) else free
    names = contract.descriptions(cfg.data.path)
    samples["prompt"], samples["answer"] = texts(samples, names)

    base, tokenizer = model.load(cfg.model)
    where = kernels.device(cfg.device, "finetune")
    # Checkpoints belong to exactly these samples, settings, training code and device class; else start afresh.
    key = hashlib.sha256(pd.util.hash_pandas_object(samples.drop(columns=["retrieved", "popular", "last"])).values.tobytes()
                         + OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["finetune", "model"])).encode()
                         + Path(lora.__file__).read_bytes() + kernels.device_class(where).encode())
    ckpt_dir = Path(cfg.paths.checkpoints) / f"finetune-{key.hexdigest()[:16]}"
    log_dir = Path(cfg.paths.metrics) / "finetune"
    began = time.perf_counter()
    adapter, stats = lora.train(base, tokenizer, samples["prompt"].tolist(), samples["answer"].tolist(), ft,
                                ckpt_dir, log_dir, accelerator="gpu" if where == "cuda" else "cpu")
    wall = time.perf_counter() - began
    with atomic_path(cfg.paths.adapter, owns=ADAPTER_FILES) as tmp:
        adapter.save_pretrained(tmp)
        lora.normalise_config(tmp / "adapter_config.json")
        adapter_sha = sha256(tmp / "adapter_model.safetensors")
    write_parquet(samples, cfg.paths.samples)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    # Samples seen: the samples drawn over the steps, repeats counted (`samples` is the set they come from).
    seen = stats["steps"] * ft.batch_size
    # Whether a checkpoint was picked up depends on what an earlier run left: a run record, not a metric.
    timing.note(train_s=round(wall, 1), samples_per_s=round(seen / wall, 2), resumed=stats.pop("resumed"))
    write_metrics(cfg.paths.metrics, "finetune", {
        **stats, "samples_seen": seen, "pairs": int(samples.groupby(["c1", "c2"]).ngroups), "rag_samples": int((samples.retrieved.map(bool) | samples["last"].map(bool)).sum())},
        {"train_window": [str(w.train_start), str(w.test_start)], "lined_samples": len(anchored),
         # how informative the lined samples' lines are: the share whose label is the line's first cluster
         "lined_label_is_line": round(float(np.mean([(r or b)[0] == c for r, b, c in zip(
             anchored.retrieved, anchored["last"], anchored.c_next)])), 6) if len(anchored) else None,
         "lined_last_samples": int(anchored["last"].map(bool).sum()), "adapter_sha256": adapter_sha, **kernels.lineage(where),
         "base_model_sha256": model.identity(cfg.model), "template_sha256": prompts.TEMPLATE_HASH})
    print(f"finetune: {len(samples)} samples over {stats['steps']} steps in {wall:.0f}s "
          f"({seen / wall:.1f} samples/s), final loss {stats['final_loss']:.3f}")
