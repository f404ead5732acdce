"""A content-addressed store of decoded answers, so a refresh only decodes prompts that changed.

Everything that can change an answer except the prompt itself (base weights, adapter, template,
the description set, decoding settings, the decoder's code) names the namespace directory; the
prompt's sha256 is the key inside it. Entries are only ever added, as whole Parquet parts written
atomically, so a killed run keeps every finished part and a hit is the answer a fresh run gives.
It lives outside DVC's outputs, which DVC deletes before rerunning a stage.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from pipeline.files import atomic_path, write_parquet


def namespace(m, adapter: Path | str | None, names: dict[int, str], llm, **decoding) -> dict:
    """Everything besides the prompt that decides an answer: weights, adapter, template, the
    descriptions (the trie), dtype, device class (kernels), the decoder's code and the decoding
    settings; answers from different devices are never mixed."""
    from pipeline import kernels
    from pipeline.files import tree_sha256
    from pipeline.llm import bulk, model, prompts

    return {"base_model_hash": model.identity(m), "adapter_hash": tree_sha256(adapter) if adapter else None,
            "template_hash": prompts.TEMPLATE_HASH, "descriptions": {str(k): v for k, v in sorted(names.items())},
            "dtype": str(llm.dtype), "device_class": kernels.device_class(str(llm.device)),
            "decoder": tree_sha256(bulk.__file__), **decoding}


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

    def load(self) -> dict[str, str]:
        """prompt -> answer for every stored entry."""
        found: dict[str, str] = {}
        for part in sorted(self.dir.glob("part-*.parquet")):
            try:
                frame = pd.read_parquet(part, columns=["key", "prompt", "answer"])
            except Exception as exc:  # a damaged part must not pass silently as a miss
                raise ValueError(f"{part}: unreadable answer-cache part ({exc}); delete it to recompute") from exc
            bad = frame.key != frame.prompt.map(key)
            if bad.any():
                raise ValueError(f"{part}: row {int(bad.idxmax())} has a key that is not its prompt's sha256; "
                                 "delete the part to recompute")
            found.update(zip(frame.prompt, frame.answer))
        return found

    def add(self, prompts: list[str], answers: list[str]) -> None:
        frame = pd.DataFrame({"key": [key(p) for p in prompts], "prompt": prompts, "answer": answers})
        name = hashlib.sha256("".join(frame.key).encode()).hexdigest()[:24]
        write_parquet(frame, self.dir / f"part-{name}.parquet")

    def fill(self, missing: list[str], decode: Callable[[list[str], Callable[[int], None]], list[str]],
             shard_size: int, label: str = "decoding") -> dict[str, str]:
        """Decode `missing` in shards of shard_size (in the order given), storing each shard as it completes.

        decode(prompts, advance) returns their answers and calls advance(n) as it goes."""
        done: dict[str, str] = {}
        columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), _Rate(), TimeRemainingColumn())
        with Progress(*columns) as bar:
            task = bar.add_task(label, total=len(missing))
            for start in range(0, len(missing), shard_size):
                shard = missing[start:start + shard_size]
                outputs = decode(shard, lambda n: bar.advance(task, n))
                self.add(shard, outputs)
                done.update(zip(shard, outputs))
        return done


class _Rate(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed or 0:.1f} prompts/s")
