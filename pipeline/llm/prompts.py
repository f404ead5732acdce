"""The prompt template (docs/design.md, "Prompts and answers"; the paper's Figure 1), kept short and in one place.

A fine-tuning prompt lists the user's last two distinct clusters as keyword sets and asks
for a novel next cluster; its label is the next cluster's description. A RAG prompt adds the
evidence retrieved for the pair: what recently followed the pair itself, or where the pair has
too little of that, what recently followed its last cluster (pipeline/evidence.py), and
optionally the currently popular clusters. TEMPLATE_HASH goes into every artifact built from
these prompts.
"""
from __future__ import annotations

import hashlib

TEMPLATE_VERSION = "2"
HISTORY = "Recent interests:\n- {c1}\n- {c2}\n"
RETRIEVED = "Recently followed by: {retrieved}\n"
# The last cluster's recent successor, shown only where the pair has no line of its own.
LAST = "Recently after the last one: {last}\n"
POPULAR = "Popular now: {popular}\n"
ASK = "Next new interest:"
# Descriptions follow the question after one space; the model ends them with its EOS token.
ANSWER_PREFIX = " "

TEMPLATE_HASH = hashlib.sha256(
    "\x1f".join([TEMPLATE_VERSION, HISTORY, RETRIEVED, LAST, POPULAR, ASK, ANSWER_PREFIX]).encode()).hexdigest()


def prompt(c1: str, c2: str, retrieved: list[str] = (), popular: list[str] = (), last: list[str] = ()) -> str:
    """The prompt for a history (c1, c2) given as descriptions; retrieved, last or popular make it a RAG prompt."""
    text = HISTORY.format(c1=c1, c2=c2)
    if retrieved:
        text += RETRIEVED.format(retrieved="; ".join(retrieved))
    if last:
        text += LAST.format(last="; ".join(last))
    if popular:
        text += POPULAR.format(popular="; ".join(popular))
    return text + ASK


def for_pair(names: dict[int, str], c1: int, c2: int, retrieved: list[int] = (), popular: list[int] = (),
             last: list[int] = ()) -> str:
    """The prompt for a history of cluster ids; retrieved, last or popular ids make it a RAG prompt."""
    return prompt(names[c1], names[c2], [names[r] for r in retrieved], [names[p] for p in popular],
                  [names[x] for x in last])


def answer(description: str) -> str:
    """The label text for a fine-tuning sample (the tokenizer's EOS is appended at tokenisation)."""
    return ANSWER_PREFIX + description


def parse(outputs: list[str], names: dict[int, str]) -> list[int | None]:
    """The cluster each answer names: exact match of the stripped text to a description, None if none."""
    ids = {description: cluster for cluster, description in names.items()}
    return [ids.get(text.strip()) for text in outputs]
