"""Bulk decoding of many short prompts into cluster descriptions (docs/decoder.md).

This is the cost centre of every table, so three things cut the work; none changes a greedy result:
- prompts are split at their shared token prefixes (a radix tree); each shared prefix runs once and
  its KV cache is copied under every prompt that starts with it;
- answers are cluster descriptions: once the generated tokens start one, the rest of it is drafted
  from the description trie and checked in one forward pass (a drafted token is kept only where it
  is the argmax, so free decoding stays exactly greedy);
- in constrained mode decoding ends as soon as one cluster is left, and tokens the trie forces are
  fed as one chunk without a choice.
Padding is always on the right and masked, with explicit position ids, so rows of different
lengths share a batch without shifting each other.

Every answer also carries its log-probability under the model: the sum of each chosen token's
log-softmax over the whole vocabulary (temperature 1), EOS included when it ends the answer. In
free decoding every token is chosen (a kept draft token is the argmax at its position), so it is
the log-probability of the whole answer; constrained decoding scores only the tokens it chose, as
the trie leaves the forced ones no alternative. Hybrid serving uses it as the model's confidence.

Everything lives on the model's device. Per decoding step the host reads back one small tensor
(each row's chosen tokens and their log-probabilities), which the trie logic needs; inputs are
built on the host and moved in one copy per step.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache, DynamicLayer

from pipeline.llm import prompts


@dataclass(frozen=True)
class Trie:
    """Token paths (ANSWER_PREFIX + description + EOS) of the clusters, indexed by every prefix."""
    paths: dict[int, tuple[int, ...]]
    eos: int
    below: dict[tuple[int, ...], tuple[int, ...]] = field(repr=False)

    @classmethod
    def build(cls, tokenizer, names: dict[int, str]) -> Trie:
        eos = tokenizer.eos_token_id
        paths = {c: tuple(tokenizer(prompts.answer(names[c]), add_special_tokens=False).input_ids) + (eos,)
                 for c in sorted(names)}
        seen: dict[tuple[int, ...], int] = {}
        for c, path in paths.items():
            if path in seen:
                raise ValueError(f"clusters {seen[path]} and {c} have the same description {names[c]!r}: "
                                 "their answers cannot be told apart")
            seen[path] = c
        return cls.from_paths(paths, eos)

    @classmethod
    def from_paths(cls, paths: dict[int, tuple[int, ...]], eos: int) -> Trie:
        below: dict[tuple[int, ...], list[int]] = {}
        for c, path in sorted(paths.items()):
            for n in range(len(path) + 1):
                below.setdefault(path[:n], []).append(c)
        return cls(dict(paths), eos, {k: tuple(v) for k, v in below.items()})

    def tokens_needed(self) -> int:
        """The least max_new_tokens with which constrained decoding completes every answer. It takes
        a cluster's whole path once a chosen token leaves that cluster alone in the trie, but checks
        the budget first, so a path needs one token past that point, or just its length when only its
        EOS sets it apart (a description that begins another)."""
        def alone(path: tuple[int, ...]) -> int:
            return next(n for n in range(1, len(path) + 1) if len(self.below[path[:n]]) == 1)

        return max(min(alone(path) + 1, len(path)) for path in self.paths.values())

    def clusters(self, prefix: tuple[int, ...], exclude: tuple[int, ...] = ()) -> list[int]:
        """Clusters whose answer starts with prefix, less the excluded ones."""
        return [c for c in self.below.get(prefix, ()) if c not in exclude]

    def forced(self, prefix: tuple[int, ...], clusters: list[int]) -> tuple[int, ...]:
        """The tokens after prefix that every one of clusters' answers continues with."""
        return tuple(os.path.commonprefix([self.paths[c][len(prefix):] for c in clusters]))


@dataclass
class _Tree:
    """Radix tree of prompts without their last token: nodes are shared prefixes (run once each),
    every prompt is a leaf holding the rest of its tokens (at least its last one)."""
    node_tokens: list[list[int]] = field(default_factory=list)
    node_parent: list[int | None] = field(default_factory=list)
    leaf_parent: list[int | None] = field(default_factory=list)
    leaf_tokens: list[list[int]] = field(default_factory=list)

    @classmethod
    def build(cls, tokens: list[list[int]]) -> _Tree:
        tree = cls(leaf_parent=[None] * len(tokens), leaf_tokens=[[]] * len(tokens))
        order = sorted(range(len(tokens)), key=lambda i: tokens[i])
        stack = [(order, 0, None)]
        while stack:
            group, start, parent = stack.pop()
            if len(group) == 1:
                tree.leaf_parent[group[0]], tree.leaf_tokens[group[0]] = parent, tokens[group[0]][start:]
                continue
            contexts = [tokens[i][:-1] for i in group]
            end = start + len(os.path.commonprefix([contexts[0][start:], contexts[-1][start:]]))
            if end > start:
                tree.node_tokens.append(contexts[0][start:end])
                tree.node_parent.append(parent)
                parent = len(tree.node_tokens) - 1
            children: dict[int | None, list[int]] = {}
            for i, context in zip(group, contexts):
                children.setdefault(context[end] if len(context) > end else None, []).append(i)
            for key, members in children.items():
                if key is None:  # the context ends here: what is left is the last token
                    for i in members:
                        tree.leaf_parent[i], tree.leaf_tokens[i] = parent, tokens[i][end:]
                else:
                    stack.append((members, end, parent))
        return tree

    def chain(self, node: int | None) -> list[int]:
        out = []
        while node is not None:
            out.append(node)
            node = self.node_parent[node]
        return out[::-1]


class _Reserved(DynamicLayer):
    """A cache layer over a buffer with room ahead: appending writes in place, where DynamicLayer
    would copy the whole cache on every forward pass."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, used: int):
        super().__init__()
        self.lazy_initialization(keys, values)
        self.k_buf, self.v_buf, self.used = keys, values, used
        self._view()

    def _view(self) -> None:
        self.keys, self.values = self.k_buf[:, :, :self.used], self.v_buf[:, :, :self.used]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self.used + key_states.shape[-2]
        if end > self.k_buf.shape[-2]:  # out of room (long free-text answers): grow
            extra = (0, 0, 0, end - self.k_buf.shape[-2])
            self.k_buf = torch.nn.functional.pad(self.k_buf, extra)
            self.v_buf = torch.nn.functional.pad(self.v_buf, extra)
        self.k_buf[:, :, self.used:end], self.v_buf[:, :, self.used:end] = key_states, value_states
        self.used = end
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
        self._view()


class _Batch:
    """Rows decoded together: one KV cache, a mask over its (right-padded) positions, and each row's
    next position id."""

    def __init__(self, model, pad_id: int, pasts: list[list[torch.Tensor]], room: int):
        self.decoder, self.head, self.pad_id = model.get_decoder(), model.get_output_embeddings(), pad_id
        self.device = self.head.weight.device
        lengths = [sum(p.shape[3] for p in past) for past in pasts]
        width = max(lengths)
        self.mask = _padded([[1] * n for n in lengths], 0, width).to(self.device)
        self.next_pos = torch.tensor(lengths, dtype=torch.long).to(self.device)
        self.last_width, self.last_lengths = 0, []
        layers, heads, head_dim = _kv_dims(model.config)
        kv = torch.zeros((layers, 2, len(pasts), heads, width + room, head_dim),
                         dtype=self.head.weight.dtype, device=self.device)
        for row, (past, n) in enumerate(zip(pasts, lengths)):
            if past:
                kv[:, :, row, :, :n] = torch.cat(past, dim=3)
        self.cache = Cache(layers=[_Reserved(kv[layer, 0], kv[layer, 1], width) for layer in range(len(kv))])

    def feed(self, rows: list[list[int]]) -> tuple[torch.Tensor, int]:
        """Run each row's new tokens; returns hidden states (rows, width, d) and the width fed."""
        width = max(len(r) for r in rows)
        ids = _padded(rows, self.pad_id, width).to(self.device)
        real = _padded([[1] * len(r) for r in rows], 0, width).to(self.device)
        self.last_width, self.last_lengths = width, [len(r) for r in rows]
        pos = self.next_pos[:, None] + torch.arange(width, device=self.device)[None, :]
        self.mask = torch.cat([self.mask, real], dim=1)
        out = self.decoder(input_ids=ids, attention_mask=self.mask, position_ids=pos, cache=self.cache,
                           use_cache=True)
        self.next_pos = self.next_pos + real.sum(dim=1)
        return out.last_hidden_state, width

    def kv_of_last(self, width: int, lengths: list[int]) -> list[torch.Tensor]:
        """Per row, the KV of its last-fed real tokens, shaped (layers, 2, heads, n, head_dim)."""
        keys = torch.stack([layer.keys for layer in self.cache.layers])  # (layers, rows, heads, positions, d)
        values = torch.stack([layer.values for layer in self.cache.layers])
        start = keys.shape[3] - width
        return [torch.stack([keys[:, row, :, start:start + n], values[:, row, :, start:start + n]], dim=1)
                for row, n in enumerate(lengths)]

    def unfeed(self, row: int, count: int) -> None:
        """Mask out the last `count` fed positions of row (a rejected draft) and rewind its positions.

        The last feed took the mask's last `width` columns, a row's real tokens first."""
        if count:
            end = self.mask.shape[1] - self.last_width + self.last_lengths[row]
            self.mask[row, end - count:end] = 0
            self.next_pos[row] -= count

    def keep(self, rows: list[int]) -> None:
        if rows == list(range(len(self.mask))):
            return
        index = torch.tensor(rows, dtype=torch.long).to(self.device)
        self.cache.batch_select_indices(index)
        self.mask, self.next_pos = self.mask[index], self.next_pos[index]
        self.last_lengths = [self.last_lengths[r] for r in rows]


def _kv_dims(config) -> tuple[int, int, int]:
    """(layers, key-value heads, head size) of a model's KV cache."""
    c = config.get_text_config(decoder=True)
    return c.num_hidden_layers, c.num_key_value_heads, getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def row_bytes(config, tokens: int, scored: int, itemsize: int) -> dict[str, int]:
    """The device memory one batch row holds at its peak (docs/gpu.md): its KV buffer, `tokens`
    positions (its prompt, max_new_tokens and 8 of room), in the weights' dtype of `itemsize` bytes;
    and the logits of the `scored` positions one step feeds (1 plus the drafted tokens), in that
    dtype plus a float32 copy (none when already float32) and its float32 log-softmax."""
    layers, heads, head_dim = _kv_dims(config)
    vocab = config.get_text_config(decoder=True).vocab_size
    return {"kv": layers * 2 * heads * head_dim * itemsize * tokens,
            "logits": vocab * scored * (itemsize + (4 if itemsize != 4 else 0) + 4)}


def _padded(rows: list[list[int]], pad: int, width: int) -> torch.Tensor:
    """Rows right-padded to width, built on the host in one call."""
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)


@dataclass
class Settings:
    constrained: bool
    max_new_tokens: int
    batch_size: int
    # 0 is greedy; above it free decoding samples, each prompt from its own seeded generator, one
    # draw per generated token in order, so drafting gives what token-by-token sampling gives.
    temperature: float = 0.0


def decode(model, tokens: list[list[int]], trie: Trie, settings: Settings, pad_id: int,
           exclude: list[tuple[int, ...]] | None = None, advance: Callable[[int], None] = lambda n: None,
           seeds: list[int] | None = None) -> list[tuple[int, ...]]:
    """Answer token ids (EOS dropped) of each tokenised prompt, in the order given (decode_scored
    without the log-probabilities)."""
    return [ids for ids, _ in decode_scored(model, tokens, trie, settings, pad_id, exclude, advance, seeds)]


@torch.inference_mode()
def decode_scored(model, tokens: list[list[int]], trie: Trie, settings: Settings, pad_id: int,
                  exclude: list[tuple[int, ...]] | None = None, advance: Callable[[int], None] = lambda n: None,
                  seeds: list[int] | None = None) -> list[tuple[tuple[int, ...], float]]:
    """(answer token ids with EOS dropped, the answer's log-probability) of each tokenised prompt,
    in the order given.

    exclude: per prompt, clusters constrained decoding may not answer (c1 and c2);
    seeds: per prompt, the sampling seed when settings.temperature > 0. CUDA running out of memory is
    a one-line error naming the batch size (shards stored before it are kept by the answer cache)."""
    try:
        return _decode_scored(model, tokens, trie, settings, pad_id, exclude, advance, seeds)
    except torch.cuda.OutOfMemoryError as exc:
        said = str(exc).splitlines()[0][:160] if str(exc) else "out of memory"
        raise ValueError(f"CUDA out of memory decoding at batch size {settings.batch_size} ({said}): lower "
                         "bulk_infer.batch_size.cuda (gate.batch_size.cuda for the gate); docs/gpu.md gives the memory "
                         "per batch row") from None


def _decode_scored(model, tokens: list[list[int]], trie: Trie, settings: Settings, pad_id: int,
                   exclude: list[tuple[int, ...]] | None, advance: Callable[[int], None],
                   seeds: list[int] | None) -> list[tuple[tuple[int, ...], float]]:
    if any(not t for t in tokens):
        raise ValueError("an empty prompt cannot be decoded")
    if settings.temperature > 0 and (settings.constrained or seeds is None or len(seeds) != len(tokens)):
        raise ValueError("sampling (temperature > 0) needs free decoding and one seed per prompt")
    exclude = exclude or [()] * len(tokens)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds] if settings.temperature > 0 else None
    tree = _Tree.build(tokens)
    kv: dict[int, torch.Tensor] = {}
    _run_nodes(model, tree, kv, settings.batch_size, pad_id)
    out: list[tuple[tuple[int, ...], float]] = [((), 0.0)] * len(tokens)
    # Rows with the same leaf length go together: every padded leaf slot costs a full token's compute.
    order = sorted(range(len(tokens)), key=lambda i: (len(tree.leaf_tokens[i]), len(tokens[i]), tokens[i]))
    for rows in _batches(order, lambda i: len(tree.leaf_tokens[i]), settings.batch_size):
        pasts = [[kv[n] for n in tree.chain(tree.leaf_parent[i])] for i in rows]
        room = max(len(tree.leaf_tokens[i]) for i in rows) + settings.max_new_tokens + 8
        batch = _Batch(model, pad_id, pasts, room)
        hidden, _ = batch.feed([tree.leaf_tokens[i] for i in rows])
        last = torch.tensor([len(tree.leaf_tokens[i]) - 1 for i in rows]).to(hidden.device)
        logits = batch.head(hidden[torch.arange(len(rows), device=hidden.device), last])
        rng = [generators[i] for i in rows] if generators else None
        for i, answer in zip(rows, _answer(batch, logits, trie, settings, [exclude[i] for i in rows], rng)):
            out[i] = answer
        advance(len(rows))
    return out


def _batches(order: list[int], width: Callable[[int], int], batch_size: int) -> Iterator[list[int]]:
    """Consecutive rows of `order` (sorted by width) in batches of at most batch_size, cut early once
    a batch holds a quarter of that and the next row would widen it by more than a sixth."""
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or
                      (len(batch) >= batch_size // 4 and 6 * width(i) > 7 * width(batch[0]))):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _run_nodes(model, tree: _Tree, kv: dict[int, torch.Tensor], batch_size: int, pad_id: int) -> None:
    """KV of every shared prefix, parents before children."""
    depth = {}
    for n in range(len(tree.node_tokens)):
        depth[n] = len(tree.chain(n))
    order = sorted(depth, key=lambda n: (depth[n], len(tree.node_tokens[n]), tree.node_tokens[n]))
    for d in sorted(set(depth.values())):
        level = [n for n in order if depth[n] == d]
        for nodes in _batches(level, lambda n: len(tree.node_tokens[n]), batch_size):
            pasts = [[kv[p] for p in tree.chain(tree.node_parent[n])] for n in nodes]
            batch = _Batch(model, pad_id, pasts, max(len(tree.node_tokens[n]) for n in nodes))
            _, width = batch.feed([tree.node_tokens[n] for n in nodes])
            for n, own in zip(nodes, batch.kv_of_last(width, [len(tree.node_tokens[n]) for n in nodes])):
                kv[n] = own.clone()


def _answer(batch: _Batch, logits: torch.Tensor, trie: Trie, s: Settings, exclude: list[tuple[int, ...]],
            rng: list[torch.Generator] | None) -> list[tuple[tuple[int, ...], float]]:
    """Decode answers and their log-probabilities from the first-token logits, drafting (free) or
    forcing (constrained) from the trie."""
    out: list[list[int]] = [[] for _ in exclude]
    score = [0.0] * len(exclude)
    active = list(range(len(exclude)))
    # Per active row, the logits of each fed position and how many drafted tokens to verify.
    lengths = [1] * len(active)
    drafts: list[tuple[int, ...]] = [() for _ in active]
    while active:
        # One read-back per step: every row's argmax (free), its choice among the tokens the trie
        # allows (constrained; one position per row), or the logits to sample from (on the host,
        # where each prompt's generator lives).
        if s.constrained:
            tops, logps = _constrained_choices(logits, trie, [tuple(out[r]) for r in active],
                                               [exclude[r] for r in active])
        elif rng:
            per_row = list(logits.float().cpu().split(lengths))
        else:
            # The argmax of the logits themselves, as always; its log-probability is read beside it.
            chosen = logits.argmax(-1)
            scored = logits.float().log_softmax(-1).gather(1, chosen[:, None])[:, 0]
            ids, lps = torch.stack([chosen.double(), scored.double()]).tolist()
            tops, logps = [], []
            for n in lengths:
                tops.append([int(t) for t in ids[:n]])
                logps.append(lps[:n])
                ids, lps = ids[n:], lps[n:]
        still, feeds, next_drafts = [], [], []
        for slot, r in enumerate(active):
            generated, done = out[r], False
            for j, draft_token in enumerate(drafts[slot] + (None,)):
                if rng:
                    probs = torch.softmax(per_row[slot][j] / s.temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1, generator=rng[r]))
                    logp = float(torch.log_softmax(per_row[slot][j], dim=-1)[token])
                else:
                    token, logp = tops[slot][j], logps[slot][j]
                generated.append(token)
                score[r] += logp
                if draft_token is not None and token == draft_token:
                    continue
                batch.unfeed(slot, len(drafts[slot]) - j)
                break
            if generated[-1] == trie.eos or len(generated) >= s.max_new_tokens:
                done = True
            elif s.constrained:
                left = trie.clusters(tuple(generated), exclude[r])
                if len(left) == 1:  # the rest is forced: no need to run it
                    out[r] = list(trie.paths[left[0]])
                    done = True
            if done:
                continue
            ahead = tuple(generated)
            candidates = trie.clusters(ahead, exclude[r] if s.constrained else ())
            draft = trie.forced(ahead, candidates) if candidates else ()
            if draft and draft[-1] == trie.eos:
                draft = draft[:-1]  # EOS is predicted, never fed
            draft = draft[:max(0, s.max_new_tokens - len(generated) - 1)]
            still.append((slot, r))
            feeds.append([generated[-1], *draft])
            next_drafts.append(draft)
        if not still:
            break
        batch.keep([slot for slot, _ in still])
        hidden, _ = batch.feed(feeds)
        lengths = [len(f) for f in feeds]
        real = torch.arange(hidden.shape[1])[None, :] < torch.tensor(lengths)[:, None]
        logits = batch.head(hidden[real.to(hidden.device)])  # none for padding
        active = [r for _, r in still]
        if s.constrained:  # forced tokens are taken as they are; the choice is at the last one
            ends = torch.tensor(lengths).cumsum(0) - 1
            logits, lengths = logits[ends.to(logits.device)], [1] * len(active)
            for i, r in enumerate(active):
                out[r].extend(next_drafts[i])
            next_drafts = [() for _ in active]
        drafts = next_drafts
    return [(tuple(t for t in answer if t != trie.eos), logp) for answer, logp in zip(out, score)]


def _constrained_choices(logits: torch.Tensor, trie: Trie, generated: list[tuple[int, ...]],
                         exclude: list[tuple[int, ...]]) -> tuple[list[list[int]], list[list[float]]]:
    """Per row (one logits row each), the argmax over the next tokens the trie allows after its
    generated tokens, the excluded clusters left out, and its log-probability over the whole
    vocabulary; as one gather and one read-back."""
    allowed = [sorted({trie.paths[c][len(g)] for c in trie.clusters(g, x)}) for g, x in zip(generated, exclude)]
    width = max(len(a) for a in allowed)
    index = _padded(allowed, 0, width).to(logits.device)
    valid = _padded([[1] * len(a) for a in allowed], 0, width).to(logits.device).bool()
    scores = logits.gather(1, index).masked_fill(~valid, float("-inf"))
    k = scores.argmax(-1)
    logp = logits.float().log_softmax(-1).gather(1, index.gather(1, k[:, None]))[:, 0]
    picks, lps = torch.stack([k.double(), logp.double()]).tolist()
    return [[a[int(i)]] for a, i in zip(allowed, picks)], [[x] for x in lps]



def answers(model, tokenizer, texts: list[str], trie: Trie, settings: Settings,
            exclude: list[tuple[int, ...]] | None = None, advance: Callable[[int], None] = lambda n: None,
            seeds: list[int] | None = None) -> list[str]:
    """decode() on prompt texts: the answer texts, special tokens dropped."""
    return [text for text, _ in scored_answers(model, tokenizer, texts, trie, settings, exclude, advance, seeds)]


def scored_answers(model, tokenizer, texts: list[str], trie: Trie, settings: Settings,
                   exclude: list[tuple[int, ...]] | None = None, advance: Callable[[int], None] = lambda n: None,
                   seeds: list[int] | None = None) -> list[tuple[str, float]]:
    """decode_scored() on prompt texts: (answer text with special tokens dropped, its log-probability)."""
    tokens = [tokenizer(t, add_special_tokens=False).input_ids for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else trie.eos
    out = decode_scored(model, tokens, trie, settings, pad, exclude, advance, seeds)
    return [(tokenizer.decode(list(ids), skip_special_tokens=True), logp) for ids, logp in out]
