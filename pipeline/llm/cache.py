"""A content-addressed store of decoded answers, so a refresh only decodes prompts that changed.

Everything that can change an answer except the prompt itself (base weights, adapter, template,
the description set, decoding settings, the decoder's code) names the namespace directory; the
prompt's sha256 is the key inside it. An entry is the answer text and its log-probability under the
model (bulk.decode_scored); FORMAT, part of the namespace, moved when the log-probability joined,
so parts written before hold no place in today's namespaces. Entries are only ever added, as whole Parquet parts written
atomically, so a killed run keeps every finished part and a hit is the answer a fresh run gives.
It lives outside DVC's outputs, which DVC deletes before rerunning a stage.

Each part carries in its Parquet metadata a sha256 over its rows and its namespace directory's
name, checked on every load: a part whose answers were edited, or one copied in from another
namespace, stops the stage with a one-line error naming it. Nothing is recomputed behind the
user's back: `python -m pipeline.llm cache --drop-corrupt` deletes the parts that fail, and the
next run decodes their prompts again.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from pipeline.files import atomic_path, write_annotated

CHECKSUM = b"answer_cache_sha256"
# What a part holds; part of every namespace, so parts of another format are never read together.
FORMAT = "answer+logprob"
COLUMNS = ["key", "prompt", "answer", "logprob"]
DROP = "python -m pipeline.llm cache --drop-corrupt"


def namespace(m, adapter: Path | str | None, names: dict[int, str], dtype: str, device: str, **decoding) -> dict:
    """Everything besides the prompt that decides an answer: weights, adapter, template, the
    descriptions (the trie), dtype (bulk_infer.dtype), device class (kernels), the decoder's code and the
    decoding settings; answers from different devices are never mixed. Known before the model is
    loaded, so a run whose answers are all cached never loads it."""
    from pipeline import kernels
    from pipeline.files import tree_sha256
    from pipeline.llm import bulk, model, prompts

    return {"base_model_hash": model.identity(m), "adapter_hash": tree_sha256(adapter) if adapter else None,
            "template_hash": prompts.TEMPLATE_HASH, "descriptions": {str(k): v for k, v in sorted(names.items())},
            "dtype": str(kernels.dtype(dtype)), "device_class": kernels.device_class(device),
            "decoder": tree_sha256(bulk.__file__), "format": FORMAT, **decoding}


def key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()


class AnswerCache:
    def __init__(self, root: Path | str, namespace: dict):
        blob = json.dumps(namespace, sort_keys=True)
        self.dir = Path(root) / hashlib.sha256(blob.encode()).hexdigest()[:24]
        self.dir.mkdir(parents=True, exist_ok=True)
        ns = self.dir / "namespace.json"
        if not ns.exists():
            with atomic_path(ns) as tmp:
                tmp.write_text(blob + "\n", encoding="utf-8")

    def load(self) -> dict[str, tuple[str, float]]:
        """prompt -> (answer, log-probability) for every stored entry; a part that fails its check
        stops the run."""
        found: dict[str, tuple[str, float]] = {}
        for part in sorted(self.dir.glob("part-*.parquet")):
            frame, problem = read_part(part)
            if problem:
                raise ValueError(f"{part}: answer-cache part {problem}; `{DROP}` deletes it and the next run "
                                 "recomputes its answers")
            found.update(zip(frame.prompt, zip(frame.answer, frame.logprob.tolist())))
        return found

    def add(self, prompts: list[str], answers: list[tuple[str, float]]) -> None:
        frame = pd.DataFrame({"key": [key(p) for p in prompts], "prompt": prompts,
                              "answer": [a for a, _ in answers], "logprob": [float(x) for _, x in answers]})
        name = hashlib.sha256("".join(frame.key).encode()).hexdigest()[:24]
        write_annotated(frame, self.dir / f"part-{name}.parquet",
                        {CHECKSUM: checksum(self.dir.name, frame).encode()})

    def fill(self, missing: list[str], decode: Callable[[list[str], Callable[[int], None]], list[tuple[str, float]]],
             shard_size: int, label: str = "decoding") -> dict[str, tuple[str, float]]:
        """Decode `missing` in shards of shard_size (in the order given), storing each shard as it completes.

        decode(prompts, advance) returns their (answer, log-probability) and calls advance(n) as it goes."""
        done: dict[str, tuple[str, float]] = {}
        columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), _Rate(), TimeRemainingColumn())
        with Progress(*columns) as bar:
            task = bar.add_task(label, total=len(missing))
            for start in range(0, len(missing), shard_size):
                shard = missing[start:start + shard_size]
                outputs = decode(shard, lambda n: bar.advance(task, n))
                self.add(shard, outputs)
                done.update(zip(shard, outputs))
        return done


def checksum(namespace_dir: str, frame: pd.DataFrame) -> str:
    """sha256 over the namespace directory's name and every row: the same rows stored under another
    namespace (other weights, template or decoding) do not pass."""
    rows = [frame[c].tolist() for c in COLUMNS]
    return hashlib.sha256(json.dumps([namespace_dir, rows]).encode()).hexdigest()


def read_part(part: Path) -> tuple[pd.DataFrame | None, str | None]:
    """(rows, None) for a part whose checksum holds, else (None, what is wrong with it)."""
    try:
        schema = pq.read_schema(part)
        lacking = [c for c in COLUMNS if c not in schema.names]
        if lacking:
            return None, f"has no {', '.join(lacking)} column (written by an older pipeline, or not by it)"
        table = pq.read_table(part, columns=COLUMNS)
    except Exception as exc:  # pyarrow raises several types for a truncated or foreign file
        return None, f"is unreadable ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    stored = (table.schema.metadata or {}).get(CHECKSUM)
    frame = table.to_pandas()
    if stored is None:
        return None, "carries no checksum (written before checksums, or not by the pipeline)"
    if stored.decode() != checksum(part.parent.name, frame):
        return None, "fails its checksum (its content changed, or it was copied from another namespace)"
    return frame, None


def corrupt_parts(root: Path | str) -> list[tuple[Path, str]]:
    """Every part under the cache root that fails its check, with the reason."""
    found = []
    for part in sorted(Path(root).glob("*/part-*.parquet")):
        problem = read_part(part)[1]
        if problem:
            found.append((part, problem))
    return found


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.1f} prompts/s")
