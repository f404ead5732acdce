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
from pathlib import Path

import pandas as pd

from pipeline.files import atomic_path


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
        with atomic_path(self.dir / f"part-{name}.parquet") as tmp:
            frame.to_parquet(tmp, index=False)
