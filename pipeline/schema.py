"""The schema of the whole config (conf/ and params.yaml): Hydra structured configs.

conf/config.yaml lists `schema` (the Config below, which hydra_plugins/pipeline_schema.py puts in
Hydra's ConfigStore) first in its defaults list, so every YAML file and override merges into typed
nodes: an unknown key, a value of the wrong type or outside an enum fails while Hydra composes. The
values live in conf/; fields here have no defaults (MISSING), only types and, in their metadata, the
range a value must fall in. Ranges and the rules that tie two keys together are checked by
Config.__post_init__, which OmegaConf.to_object runs when `load` builds the settings, because
OmegaConf checks types only; every failure is one line naming the key, the value and what is allowed.

Where the checks run:
- `python -m pipeline.config` and `config.compose`: Hydra's composition (types, enums), then `load`;
- `config.load()`, which every stage calls first: params.yaml again, whoever wrote it;
- `dvc exp run -S key=value`: DVC composes in its own process, where Hydra's plugin discovery
  brings the schema in (hydra_plugins/), so types and enums fail there; Hydra has no public hook
  after composition, so a value out of its range is written to params.yaml and refused, in the same
  line, by the first stage DVC runs, before that stage writes anything.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any, Callable, Optional

from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A setting out of its range: cli.user_errors prints it as one line."""


# --- ranges: a field's metadata says what its value must be ---------------------------------------

def _rule(ok: Callable[[Any], bool], allowed: str) -> Any:
    return field(default=MISSING, metadata={"ok": ok, "allowed": allowed})


def at_least(low: float) -> Any:
    return _rule(lambda v: v >= low, f">= {low}")


def between(low: float, high: float) -> Any:
    return _rule(lambda v: low <= v <= high, f"in [{low}, {high}]")


def below_one() -> Any:  # a probability that cannot be certain
    return _rule(lambda v: 0 <= v < 1, "in [0, 1)")


def each_at_least(low: int) -> Any:
    return _rule(lambda v: len(v) > 0 and all(x >= low for x in v), f"a non-empty list of integers >= {low}")


def non_empty() -> Any:
    return _rule(lambda v: len(v) > 0, "not empty")


def _is_date(value: str) -> bool:
    try:
        return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", value)) and bool(date.fromisoformat(value))
    except ValueError:
        return False


def _is_month(value: str) -> bool:
    return bool(re.fullmatch(r"\d{4}-\d{2}", value)) and _is_date(f"{value}-01")


def one_of(*choices: str) -> Any:  # a string a library checks only when it runs
    return _rule(lambda v: v in choices, f"one of {', '.join(choices)}")


def a_size(pattern: str, example: str) -> Any:
    return _rule(lambda v: bool(re.fullmatch(pattern, v, re.IGNORECASE)), f"a size such as {example}")


def a_date() -> Any:
    return _rule(_is_date, "a date YYYY-MM-DD")


def a_month() -> Any:
    return _rule(_is_month, "a month YYYY-MM")


# --- enums: settings the code accepts from a fixed set ----------------------------------------------

class UnknownItems(StrEnum):
    drop = "drop"  # counted in metrics/extract.json
    error = "error"


class PairNoise(StrEnum):  # data.synth.pair_noise: pipeline/data/synth.py's module docstring
    stream = "stream"  # every anchor's C^3 logits from one stream, held (the pinned presets' bytes)
    keyed = "keyed"  # a pair's logits from a stream keyed by the pair, on demand (memory ~ C^2)


class Dedupe(StrEnum):
    first_occurrence = "first_occurrence"
    consecutive = "consecutive"


class ExtractForm(StrEnum):
    auto = "auto"
    ordered = "ordered"  # DuckDB only
    partitioned = "partitioned"


class ModelSource(StrEnum):
    gguf_wheel = "gguf_wheel"
    pretrained = "pretrained"  # needs model.name_or_path
    random = "random"  # needs model.random


class RetrievalMethod(StrEnum):
    frequency = "frequency"
    trend = "trend"


class Evidence(StrEnum):
    """Which lines a RAG prompt carries (pipeline/evidence.py)."""
    instance = "instance"  # the paper's: the pair's own successor, where it has enough support
    backoff = "backoff"  # that, else its last cluster's successor


class Labels(StrEnum):  # finetune.labels: what a line-free training sample is labelled with
    top = "top"
    drawn = "drawn"


class Decoding(StrEnum):
    free = "free"
    constrained = "constrained"


class Dtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Engine(StrEnum):
    duckdb = "duckdb"
    spark = "spark"


class Kernels(StrEnum):
    portable = "portable"
    native = "native"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# --- the tree; field order is params.yaml's key order -----------------------------------------------

@dataclass
class TimeRange:
    start: str = a_date()
    end: str = a_date()


@dataclass
class EngagementRange:
    min: float = MISSING
    max: float = MISSING


@dataclass
class FinetuneWindow:
    train_days: int = at_least(1)
    test_days: int = at_least(1)
    min_pair_support: int = at_least(1)


@dataclass
class Synth:
    """The synthetic world's generator (pipeline/data/synth.py); a new setting is one field here."""
    seed: int = at_least(0)
    n_clusters: int = at_least(1)
    cold_clusters: int = at_least(0)
    items_per_cluster: int = at_least(1)
    n_users: int = at_least(1)
    n_events: int = at_least(1)
    mean_session_events: int = at_least(1)
    mean_event_gap_s: int = at_least(1)
    negative_share: float = below_one()
    repeat_prob: float = below_one()
    unknown_item_share: float = below_one()
    semantic_share: float = between(0, 1)
    zipf_exponent: float = at_least(0)
    logit_scale: float = at_least(0)
    monthly_drift: float = between(0, 1)
    anchor_days: int = at_least(1)
    trends_per_month: int = at_least(0)
    trend_days: int = at_least(1)
    trend_boost: float = at_least(0)
    chunk_events: int = at_least(1)
    pair_noise: PairNoise = MISSING


@dataclass
class Clustering:
    """MovieLens genres -> clusters (pipeline/data/movielens.py)."""
    min_movies: int = at_least(1)
    max_tags: int = at_least(0)
    stop_tags: list[str] = MISSING
    catch_all: list[str] = non_empty()


@dataclass
class Data:
    name: str = non_empty()
    path: str = non_empty()
    default_month: Optional[str] = a_month()
    time_range: TimeRange = MISSING
    unknown_items: UnknownItems = MISSING
    max_keyword_chars: int = at_least(1)
    engagement_range: EngagementRange = MISSING
    min_engagement: float = MISSING
    drift_min_support: int = at_least(1)
    finetune_window: FinetuneWindow = MISSING
    # Each dataset's own section: null where it has none.
    synth: Optional[Synth] = None
    source: Optional[str] = None
    clustering: Optional[Clustering] = None


@dataclass
class Extract:
    min_engagement: float = MISSING
    session_gap: int = at_least(1)
    dedupe: Dedupe = MISSING
    form: ExtractForm = MISSING


@dataclass
class Count:
    top_k: int = at_least(1)
    min_support: int = at_least(1)


@dataclass
class Period:
    month: Optional[str] = a_month()  # null: stages that need a month say so


@dataclass
class Wheel:
    requirement: str = MISSING
    gguf: str = MISSING


@dataclass
class RandomModel:
    seed: int = at_least(0)
    hidden_size: int = at_least(1)
    intermediate_size: int = at_least(1)
    num_hidden_layers: int = at_least(1)
    num_attention_heads: int = at_least(1)
    num_key_value_heads: int = at_least(1)


@dataclass
class Model:
    name: str = non_empty()
    source: ModelSource = MISSING
    wheel: Wheel = MISSING
    name_or_path: Optional[str] = MISSING
    local_files_only: bool = MISSING
    cache_dir: str = MISSING
    random: Optional[RandomModel] = MISSING


@dataclass
class Retrieve:
    method: RetrievalMethod = MISSING
    window_days: int = at_least(1)
    fallback_window_days: int = at_least(0)  # at or under window_days: no older line
    top_n: int = at_least(1)
    popular_n: int = at_least(0)  # 0: no popular clusters (no popular fallback or line)


@dataclass
class Refresh:
    every_days: int = at_least(1)
    until: Optional[str] = a_date()


@dataclass
class Lora:
    top_layers: Optional[int] = at_least(1)
    r: int = at_least(1)
    alpha: int = at_least(1)
    dropout: float = below_one()
    target_modules: list[str] = non_empty()


@dataclass
class Optim:
    lr: float = _rule(lambda v: v > 0, "> 0")
    weight_decay: float = at_least(0)
    warmup_steps: int = at_least(0)


@dataclass
class Trainer:
    """Arguments of lightning.Trainer (pipeline/llm/lora.py passes them all)."""
    max_steps: int = at_least(1)
    devices: int = at_least(1)
    precision: str = one_of("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
    deterministic: bool = MISSING
    gradient_clip_val: Optional[float] = at_least(0)
    log_every_n_steps: int = at_least(1)
    enable_progress_bar: bool = MISSING
    enable_model_summary: bool = MISSING


@dataclass
class Finetune:
    train_days: int = at_least(1)
    test_days: int = at_least(1)
    min_pair_support: int = at_least(1)
    labels: Labels = MISSING
    label_prior: float = at_least(0)  # top labels: pseudo-counts of the last cluster's successors
    samples_per_pair: int = at_least(1)
    seed: int = at_least(0)
    rag_share: float = between(0, 1)
    line_every_days: int = at_least(0)  # 0: no anchored lined samples
    line_label_days: int = at_least(1)
    rag_window_days: int = at_least(1)
    rag_top_n: int = at_least(1)
    lora: Lora = MISSING
    optim: Optim = MISSING
    batch_size: int = at_least(1)
    trainer: Trainer = MISSING
    checkpoint_every_n_steps: int = at_least(1)


@dataclass
class Prompts:
    popular_n: int = at_least(0)  # 0: no popular line
    min_support: int = at_least(1)
    evidence: Evidence = MISSING


@dataclass
class PerDevice:
    cpu: int = at_least(1)
    cuda: int = at_least(1)


@dataclass
class Gate:
    min_exact_match: float = between(0, 1)
    min_test_recall: float = between(0, 1)
    min_held_out_triples: int = at_least(1)
    max_pairs: int = at_least(1)
    max_new_tokens: int = at_least(1)
    batch_size: PerDevice = MISSING
    seed: int = at_least(0)
    use_adapter: bool = MISSING
    override_reason: Optional[str] = MISSING
    hybrid_taus: list[int] = each_at_least(1)
    min_support_candidates: list[int] = each_at_least(1)
    count_priors: list[float] = _rule(lambda v: len(v) > 0 and all(x >= 0 for x in v),
                                      "a non-empty list of numbers >= 0")
    bootstrap: int = at_least(1)


@dataclass
class BulkInfer:
    decoding: Decoding = MISSING
    # Constrained decoding also needs it to reach the longest description: bulk_infer checks that
    # against the description trie, which only the tokenizer and the dataset's clusters give.
    max_new_tokens: int = at_least(1)
    dtype: Dtype = MISSING
    batch_size: PerDevice = MISSING
    shard_size: PerDevice = MISSING


def _buckets_ok(bounds: dict[str, int]) -> bool:
    lows = list(bounds.values())
    return bool(lows) and lows[0] == 0 and all(a < b for a, b in zip(lows, lows[1:]))


@dataclass
class Evaluate:
    horizon: int = at_least(1)
    bootstrap: int = at_least(1)
    seed: int = at_least(0)
    repeat_temperature: float = _rule(lambda v: v > 0, "> 0")
    repeat_pairs: Optional[int] = at_least(1)  # null: every pair
    drift_k: list[int] = each_at_least(1)
    support_buckets: dict[str, int] = _rule(_buckets_ok, "lower bounds that start at 0 and ascend")


@dataclass
class DuckDB:
    threads: int = at_least(1)
    memory_limit: str = a_size(r"\d+(\.\d+)?\s*[KMGT]i?B", "1500MB")
    temp_directory: str = MISSING


@dataclass
class Spark:
    master: str = MISSING
    driver_memory: str = a_size(r"\d+[kmgt]?", "4g")
    shuffle_partitions: int = at_least(1)
    stage_dir: str = MISSING


@dataclass
class Ray:
    # Decoding workers (pipeline/llm/pool.py): 1 decodes in this process without Ray; above 1, a
    # pool of Ray actors, one per GPU on CUDA. Not part of any stage's declared params: the tables
    # are the same bytes at any worker count.
    workers: int = at_least(1)
    # null: a local Ray started for the run; else a running cluster's host:port, ray://host:port or auto.
    address: Optional[str] = None


@dataclass
class Paths:
    sequences: str = MISSING
    triples: str = MISSING
    daily_counts: str = MISSING
    samples: str = MISSING
    adapter: str = MISSING
    checkpoints: str = MISSING
    gate_predictions: str = MISSING
    retrieved: str = MISSING
    last_successors: str = MISSING
    popular: str = MISSING
    tables: str = MISSING
    infer_cache: str = MISSING
    plots: str = MISSING
    report: str = MISSING
    metrics: str = MISSING


@dataclass
class Config:
    data: Data = MISSING
    extract: Extract = MISSING
    count: Count = MISSING
    period: Period = MISSING
    model: Model = MISSING
    retrieve: Retrieve = MISSING
    refresh: Refresh = MISSING
    finetune: Finetune = MISSING
    prompts: Prompts = MISSING
    gate: Gate = MISSING
    bulk_infer: BulkInfer = MISSING
    evaluate: Evaluate = MISSING
    duckdb: DuckDB = MISSING
    engine: Engine = MISSING
    spark: Spark = MISSING
    ray: Ray = MISSING
    torch_threads: int = at_least(1)
    kernels: Kernels = MISSING
    device: Device = MISSING
    paths: Paths = MISSING

    def __post_init__(self) -> None:
        _ranges(self, "")
        _relations(self)


# --- the checks: run by Config.__post_init__ when OmegaConf.to_object builds the settings (load) -----

def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value}: expected {allowed}")


def _ranges(node: Any, prefix: str) -> None:
    """Every field's range, depth first in key order (OmegaConf builds the inner dataclasses first,
    so the root walks them all: only it knows each value's full key)."""
    for f in dataclasses.fields(node):
        key, value = prefix + f.name, getattr(node, f.name)
        if value is not None and "ok" in f.metadata and not f.metadata["ok"](value):
            _fail(key, value, f.metadata["allowed"])
        if dataclasses.is_dataclass(value):
            _ranges(value, key + ".")


def _relations(c: Config) -> None:
    """Rules that tie keys together."""
    def need(ok: bool, key: str, allowed: str) -> None:
        if not ok:
            value = c
            for name in key.split("."):
                value = getattr(value, name)
            _fail(key, value, allowed)

    d = c.data
    need(d.time_range.start < d.time_range.end, "data.time_range.end", f"a date after data.time_range.start "
         f"({d.time_range.start})")
    need(d.engagement_range.min < d.engagement_range.max, "data.engagement_range.max",
         f"above data.engagement_range.min ({d.engagement_range.min})")
    need(d.engagement_range.min <= c.extract.min_engagement <= d.engagement_range.max, "extract.min_engagement",
         f"inside data.engagement_range [{d.engagement_range.min}, {d.engagement_range.max}]")
    if d.synth is not None:
        need(d.synth.cold_clusters < d.synth.n_clusters, "data.synth.cold_clusters",
             f"fewer than data.synth.n_clusters ({d.synth.n_clusters}): some clusters must exist from the start")
    need(c.finetune.test_days < c.finetune.train_days, "finetune.test_days",
         f"fewer than finetune.train_days ({c.finetune.train_days}): the held-out days end the training window")
    # float16 weights or autocast on the CPU give NaN adapters (issue 22); bfloat16 and float32/64 train there.
    # device=auto may find a GPU: lora.train refuses float16 there when it runs on the CPU.
    need(not c.finetune.trainer.precision.startswith("16-") or c.device != Device.cpu, "finetune.trainer.precision",
         "32-true, bf16-mixed, bf16-true or 64-true unless device=cuda or auto: float16 does not train on the CPU")
    need(c.extract.form != ExtractForm.ordered or c.engine == Engine.duckdb, "extract.form",
         "auto or partitioned with engine=spark (ordered relies on DuckDB's row order)")
    need(c.model.source != ModelSource.pretrained or bool(c.model.name_or_path), "model.name_or_path",
         "an HF id or a local directory with model.source=pretrained")
    need(c.model.source != ModelSource.random or c.model.random is not None, "model.random",
         "the random model's shape with model.source=random (see conf/model/tiny_random.yaml)")
    if c.model.random is not None:
        r = c.model.random
        need(r.hidden_size % r.num_attention_heads == 0, "model.random.num_attention_heads",
             f"a divisor of model.random.hidden_size ({r.hidden_size}): each head takes an equal share")
        need(r.num_attention_heads % r.num_key_value_heads == 0, "model.random.num_key_value_heads",
             f"a divisor of model.random.num_attention_heads ({r.num_attention_heads}): heads share key-value heads evenly")
    need(c.prompts.popular_n <= c.retrieve.popular_n, "prompts.popular_n",
         f"at most retrieve.popular_n ({c.retrieve.popular_n}): the retrieve stage keeps that many popular clusters")
    if c.refresh.until is not None and c.period.month is not None:
        need(c.refresh.until.startswith(c.period.month), "refresh.until", f"a day of period.month ({c.period.month})")


def load(cfg: DictConfig, source: str | None = None) -> DictConfig:
    """`cfg` (a composition, or params.yaml as read) typed and checked by the schema; one ConfigError
    line for the first fault, prefixed with `source` where given. Merging into Config checks keys
    (Hydra's `+key=value` adds one past the typed nodes) and types;
    OmegaConf.to_object then builds Config, whose __post_init__ checks ranges and rules."""
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

    prefix = f"{source}: " if source else ""
    try:
        # As plain values: merged as a typed node, a composition would carry its added keys along.
        typed = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg, enum_to_str=True))
    except ConfigKeyError as exc:
        raise ConfigError(f"{prefix}{exc.full_key}: not a setting (the settings are in conf/ and "
                          "pipeline/schema.py)") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{prefix}{exc.full_key}: {str(exc).splitlines()[0]}") from None
    try:
        OmegaConf.to_object(typed)
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{prefix}{exc.full_key} is missing: give {exc.full_key}=...") from None
    except ConfigError as exc:
        raise ConfigError(prefix + str(exc)) from None
    return typed
