"""The synthetic world: interest clusters, items and users' engagement logs.

Users browse in sessions. Inside a session the next interest cluster follows a second-order
Markov process: logits over successors of the last two distinct clusters (a, b), the sum of
- a semantic affinity (share `semantic_share` of the preference's variance): themes sit in a
  small latent space where themes of the same domain (food, outdoors, crafts, ...) lie close,
  so a cluster's keywords say where its users tend to go next (sourdough -> pastry, coffee);
- a pair-specific idiosyncrasy that drifts: one anchor every `anchor_days`, each a
  variance-preserving AR(1) step from the previous one, interpolated day by day;
  `monthly_drift` d sets the step so that anchors a month apart correlate by sqrt(1 - d);
- a Zipf popularity prior (`zipf_exponent`): a few clusters draw most traffic, so most pairs
  are rare;
- short-lived trends that make a cluster surge for a few days.
The last `cold_clusters` clusters do not exist before a day in the data's last month: nothing
reaches them until then, so pairs with them were never seen in training (their keywords come
from existing themes). Sessions also repeat clusters (dedupe collapses them) and carry negative
events (extract drops them). Everything is drawn from seeded streams and written chunk by
chunk, so the same settings give byte-identical files in bounded memory.

`pair_noise` says where a pair's idiosyncrasy comes from. `stream` (the presets up to a few hundred
clusters) draws every anchor's C x C x C logits from one stream and holds them: the bytes data.dvc
pins, but 15 anchors of 1,000^3 float32 are 56 GiB. `keyed` draws a pair's row from a stream keyed
by the pair, when a session first needs it, so memory grows with C^2 (the part about the last
cluster) and a chunk's sessions, not C^3.
"""
from __future__ import annotations

import itertools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf
from rich.progress import Progress

from pipeline.data import contract
from pipeline.files import atomic_path, refuse_foreign

# Themes of human-readable keywords; a cluster is a theme plus three of its keywords.
THEMES = [
    ["street food", "night market", "travel vlog", "spicy noodles", "hawker stalls", "food tour"],
    ["home workout", "kettlebell", "mobility drills", "hiit", "resistance bands", "stretching"],
    ["indie games", "pixel art", "speedrun", "game dev", "roguelike", "retro consoles"],
    ["sourdough", "home baking", "pastry", "bread scoring", "cake decorating", "fermentation"],
    ["houseplants", "succulents", "repotting", "plant care", "terrarium", "propagation"],
    ["astronomy", "telescopes", "night sky", "astrophotography", "planets", "meteor showers"],
    ["woodworking", "hand tools", "joinery", "furniture making", "wood carving", "workshop tour"],
    ["budget travel", "backpacking", "hostels", "solo travel", "rail journeys", "packing tips"],
    ["jazz piano", "music theory", "improvisation", "chord voicings", "blues licks", "ear training"],
    ["vegan recipes", "meal prep", "plant protein", "lentil dishes", "tofu", "salad bowls"],
    ["urban sketching", "watercolor", "ink drawing", "sketchbook", "perspective", "plein air"],
    ["trail running", "ultramarathon", "running shoes", "hill training", "race recap", "pacing"],
    ["personal finance", "index funds", "budgeting", "frugal living", "retirement", "side hustle"],
    ["cat videos", "kitten care", "cat toys", "cat behavior", "rescue cats", "funny pets"],
    ["dog training", "puppy care", "agility", "dog breeds", "grooming", "obedience"],
    ["vintage cars", "car restoration", "engine swap", "detailing", "classic racing", "garage build"],
    ["smartphone reviews", "gadgets", "unboxing", "tech news", "wearables", "camera phones"],
    ["hiking", "mountain trails", "camping gear", "wild camping", "summit views", "backcountry"],
    ["knitting", "crochet", "yarn", "sweater patterns", "embroidery", "quilting"],
    ["coffee brewing", "espresso", "latte art", "pour over", "coffee beans", "cafe tour"],
    ["stand up comedy", "sketch comedy", "improv", "comedy podcast", "roast", "satire"],
    ["chess openings", "endgames", "blitz chess", "chess puzzles", "grandmaster games", "tactics"],
    ["interior design", "small apartments", "minimalism", "room makeover", "lighting", "decluttering"],
    ["skateboarding", "skate park", "street skating", "kickflip", "longboard", "skate videos"],
    ["ancient history", "archaeology", "roman empire", "egyptology", "lost cities", "history docs"],
    ["k-pop", "dance covers", "idol groups", "music shows", "fan cams", "choreography"],
    ["fishing", "fly fishing", "lure making", "river fishing", "sea angling", "catch and cook"],
    ["language learning", "japanese", "spanish", "vocabulary", "pronunciation", "immersion"],
    ["electronics", "arduino", "soldering", "raspberry pi", "circuits", "home automation"],
    ["makeup tutorial", "skincare", "nail art", "hair styling", "beauty haul", "fragrance"],
    ["football highlights", "tactics analysis", "transfer news", "goalkeeping", "match recap", "fan chants"],
    ["yoga flow", "meditation", "breathwork", "mindfulness", "sleep sounds", "calm music"],
    ["marine life", "coral reefs", "scuba diving", "sharks", "ocean documentary", "snorkeling"],
    ["anime reviews", "manga", "cosplay", "anime openings", "studio ghibli", "fan art"],
    ["barbecue", "smoked meat", "grilling", "brisket", "hot sauce", "campfire cooking"],
    ["photography", "street photography", "film cameras", "portraits", "photo editing", "lenses"],
]


# The semantic space: themes of one domain (by their first keyword) lie close together, because
# people who like one of them tend to like the others. Drawn by hand from what the themes are about.
DOMAINS = {
    "food and drink": ("street food", "sourdough", "vegan recipes", "coffee brewing", "barbecue"),
    "fitness and calm": ("home workout", "trail running", "yoga flow"),
    "outdoors and travel": ("budget travel", "hiking", "fishing", "marine life", "astronomy"),
    "making things": ("woodworking", "knitting", "urban sketching", "photography", "electronics"),
    "games and fandoms": ("indie games", "chess openings", "anime reviews"),
    "music and comedy": ("jazz piano", "k-pop", "stand up comedy"),
    "pets": ("cat videos", "dog training"),
    "home and money": ("houseplants", "interior design", "personal finance"),
    "wheels and sport": ("vintage cars", "skateboarding", "football highlights"),
    "gadgets and learning": ("smartphone reviews", "language learning", "ancient history"),
    "looks": ("makeup tutorial",),
}


def cluster_keywords(n_clusters: int) -> list[list[str]]:
    """Deterministic, unique keyword sets: theme i % len(THEMES), its k-th 3-keyword combination;
    past the 720 of those, its 4-keyword combinations (540 more), so 1,000 clusters have names."""
    combos = [list(itertools.combinations(theme, 3)) + list(itertools.combinations(theme, 4)) for theme in THEMES]
    limit = len(THEMES) * len(combos[0])
    if not 1 <= n_clusters <= limit:
        raise ValueError(f"data.synth.n_clusters: {n_clusters} is outside 1..{limit}")
    return [list(combos[i % len(THEMES)][i // len(THEMES)]) for i in range(n_clusters)]


@dataclass(frozen=True)
class World:
    """The hidden process: logit anchors, trend boosts per day, popularity, birth days, item catalogue."""

    start: np.datetime64
    n_days: int
    anchor_days: int
    # (n_anchors, C, C, C) successor logits every anchor_days: an array (pair_noise stream) or
    # KeyedAnchors, which computes the rows [k, a, b] it is asked for (keyed)
    anchors: np.ndarray | KeyedAnchors
    trends: np.ndarray  # (n_days, C) additive logit boost
    items: np.ndarray  # (C, items_per_cluster) item ids
    prior: np.ndarray  # (C,) log popularity, also where sessions start (0: uniform)
    born: np.ndarray  # (C,) first day a cluster exists (0: always)
    stable: np.ndarray | KeyedStable  # (C, C, C) the part of every anchor that never drifts: semantic + prior

    def logits(self, day: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Successor logits for sessions on `day` whose last two distinct clusters are (a, b)."""
        k = day // self.anchor_days
        frac = ((day % self.anchor_days) / self.anchor_days)[:, None]
        now, then = self.anchors[np.stack([k, k + 1]), a, b]  # one look-up: keyed rows are drawn once
        out = (1 - frac) * now + frac * then + self.trends[day]
        out[np.arange(len(b)), b] = -np.inf  # a move, not a repeat: repeats are drawn separately
        out[self.born[None, :] > day[:, None]] = -np.inf
        return out

    def starts(self, rng: np.random.Generator, day: np.ndarray) -> np.ndarray:
        """First clusters of sessions starting on `day`: by popularity, among clusters that exist."""
        c = len(self.prior)
        if not self.prior.any() and not self.born.any():
            return rng.integers(0, c, size=len(day))  # the dense world's own draw: its data stays byte-identical
        weights = np.where(self.born[None, :] > day[:, None], -np.inf, self.prior[None, :])
        return np.argmax(weights + rng.gumbel(size=weights.shape), axis=1)


# Theme vectors: a domain's direction plus this much of the theme's own, in this many dimensions;
# themes of one domain then have a cosine of about 0.8, of two domains about 0.
THEME_DIM, THEME_SPREAD = 8, 0.5

# pair_noise stream holds every anchor's C^3 logits: above this it stops with a one-line error
# naming keyed instead of allocating until the kernel kills it.
DENSE_LIMIT = 4 * 2**30


def cluster_domains(n_clusters: int) -> np.ndarray:
    """Each cluster's domain (an index into DOMAINS), by its theme."""
    domain_of = {head: d for d, heads in enumerate(DOMAINS.values()) for head in heads}
    return np.array([domain_of[THEMES[c % len(THEMES)][0]] for c in range(n_clusters)])


def cluster_similarity(rng: np.random.Generator, c: int) -> np.ndarray:
    """(C, C) cosine of two clusters' theme vectors (a cluster shares its theme's vector)."""
    centres = rng.standard_normal((len(DOMAINS), THEME_DIM))
    themes = centres[cluster_domains(len(THEMES))] + THEME_SPREAD * rng.standard_normal((len(THEMES), THEME_DIM))
    themes /= np.linalg.norm(themes, axis=1, keepdims=True)
    vectors = themes[np.arange(c) % len(THEMES)]
    return vectors @ vectors.T


def semantic_affinity(sim: np.ndarray) -> np.ndarray:
    """(C, C, C) standardised affinity of a pair (a, b) for a successor n: mostly how close n's
    theme is to b's, partly to a's."""
    affinity = sim[None, :, :] + 0.5 * sim[:, None, :]
    return (affinity - affinity.mean()) / (affinity.std() or 1.0)


def affinity_moments(sim: np.ndarray) -> tuple[float, float]:
    """The mean and standard deviation of semantic_affinity(sim) without its C^3 array: over all
    (a, b, n), x = sim[b, n] + 0.5 sim[a, n] has E[x] = 1.5 E[sim] and
    E[x^2] = 1.25 E[sim^2] + E_n[(E_a sim[a, n])^2] (a and b range independently)."""
    col = sim.mean(axis=0)
    mean = 1.5 * float(sim.mean())
    var = 1.25 * float((sim**2).mean()) + float((col**2).mean()) - mean**2
    return mean, float(np.sqrt(max(var, 0.0))) or 1.0


@dataclass(frozen=True)
class KeyedStable:
    """stable[a, b]: (len(a), C) semantic affinity + prior of pairs (a, b), computed on demand."""

    sim: np.ndarray  # (C, C) cluster similarity
    moments: tuple[float, float]  # affinity_moments(sim)
    scale: float  # logit_scale * sqrt(semantic_share)
    prior: np.ndarray  # (C,) log popularity

    def __getitem__(self, key) -> np.ndarray:
        a, b = key
        mean, std = self.moments
        return self.scale * ((self.sim[b] + 0.5 * self.sim[a] - mean) / std) + self.prior


@dataclass(frozen=True)
class KeyedAnchors:
    """anchors[k, a, b] of pair_noise keyed. The anchor's drifting idiosyncrasy has a part about the
    last cluster (held: n_anchors x C x C) and a part about the pair, which a stream keyed by
    (seed, 3, a, b) draws for all anchors at once, so a pair's row is the same whichever session,
    chunk or order asks for it; the AR(1) chain runs along the anchors as in stream."""

    seed: int
    last: np.ndarray  # (n_anchors, C, C) the last-cluster part, already chained and scaled
    stable: KeyedStable
    keep: float  # correlation of consecutive anchors
    scale: float  # logit_scale * sqrt(0.5) * sqrt(1 - semantic_share): the pair part's weight
    batch: int = 512  # pairs drawn together: bounds the (batch, n_anchors, C) draw

    def pair_part(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(len(a), n_anchors, C) the chained, scaled pair part of the unique pairs (a, b)."""
        n_anchors, c = self.last.shape[:2]
        z = np.stack([np.random.default_rng([self.seed, 3, int(x), int(y)]).standard_normal((n_anchors, c))
                      for x, y in zip(a, b)])
        for k in range(1, n_anchors):
            z[:, k] = self.keep * z[:, k - 1] + np.sqrt(1 - self.keep**2) * z[:, k]
        return self.scale * z

    def __getitem__(self, key) -> np.ndarray:
        k, a, b = key  # k: (..., m) anchor index per look-up; a, b: (m,)
        k = np.broadcast_to(k, np.broadcast_shapes(np.shape(k), np.shape(a)))
        c = self.last.shape[1]
        out = np.empty((*k.shape, c), dtype=np.float32)
        pairs, inverse = np.unique(np.asarray(a, np.int64) * c + b, return_inverse=True)
        for lo in range(0, len(pairs), self.batch):
            first, last = pairs[lo:lo + self.batch] // c, pairs[lo:lo + self.batch] % c
            part, stable = self.pair_part(first, last), self.stable[first, last]
            rows = np.nonzero((inverse >= lo) & (inverse < lo + self.batch))[0]
            u, kk = inverse[rows] - lo, k[..., rows]
            out[..., rows, :] = (part[u, kk] + self.last[kk, last[u]] + stable[u]).astype(np.float32)
        return out


def build_world(s: DictConfig, time_range) -> World:
    rng = np.random.default_rng([s.seed, 0])
    c = s.n_clusters
    start = np.datetime64(time_range.start, "D")
    end = np.datetime64(time_range.end, "D")
    months = np.arange(start.astype("datetime64[M]"), end.astype("datetime64[M]") + 1)
    month_starts = np.clip((months.astype("datetime64[D]") - start).astype(int), 0, None)
    n_days = int((end - start).astype(int))
    month_starts[-1] = n_days
    # Half the idiosyncrasy is about the last cluster only, half about the pair (stream: drawn here;
    # keyed: drawn per pair by KeyedAnchors).
    keyed = s.pair_noise == "keyed"
    def draw():
        last = np.sqrt(0.5) * rng.standard_normal((1, c, c))
        return s.logit_scale * (last if keyed else last + np.sqrt(0.5) * rng.standard_normal((c, c, c)))
    step = s.anchor_days
    keep = np.sqrt(1 - s.monthly_drift) ** (step / 30.0)  # correlation of consecutive anchors
    n_anchors = n_days // step + 2
    if not keyed and n_anchors * c**3 * 4 > DENSE_LIMIT:
        raise ValueError(f"data.synth.n_clusters: {c} with data.synth.pair_noise=stream holds {n_anchors} x {c}^3 "
                         f"float32 logits ({n_anchors * c**3 * 4 / 2**30:.1f} GiB); set data.synth.pair_noise=keyed")
    anchors = [draw()]
    for _ in range(n_anchors - 1):
        anchors.append(keep * anchors[-1] + np.sqrt(1 - keep**2) * draw())
    trends = np.zeros((n_days, c))
    for m in range(len(month_starts) - 1):
        lo, hi = month_starts[m], month_starts[m + 1]
        for cluster in rng.choice(c, size=min(s.trends_per_month, c), replace=False):
            first = rng.integers(lo, max(lo + 1, hi - s.trend_days + 1))
            trends[first:first + s.trend_days, cluster] += s.trend_boost
    items = rng.permutation(c * s.items_per_cluster).reshape(c, -1).astype(np.int64) + 1
    # The semantic world's own stream, so the dense world (all of it off) keeps its draws above.
    sem_rng = np.random.default_rng([s.seed, 2])
    sim = cluster_similarity(sem_rng, c)
    prior = -s.zipf_exponent * np.log1p(sem_rng.permutation(c))  # popularity rank r weighs 1 / (r + 1)^exponent
    cold = s.cold_clusters  # the schema holds it below n_clusters
    born = np.zeros(c, dtype=np.int64)
    last = month_starts[-2]  # the last month: its first half sees the cold clusters appear
    born[c - cold:] = np.sort(sem_rng.integers(last, last + max(1, (n_days - last) // 2), size=cold))
    if keyed:
        stable = KeyedStable(sim, affinity_moments(sim), s.logit_scale * np.sqrt(s.semantic_share), prior)
        anchors = KeyedAnchors(s.seed, (np.sqrt(1 - s.semantic_share) * np.concatenate(anchors)).astype(np.float32),
                               stable, keep, s.logit_scale * np.sqrt(0.5) * np.sqrt(1 - s.semantic_share))
        return World(start, n_days, step, anchors, trends.astype(np.float32), items, prior.astype(np.float32), born,
                     stable)
    semantic = s.logit_scale * np.sqrt(s.semantic_share) * semantic_affinity(sim)
    anchors = np.sqrt(1 - s.semantic_share) * np.stack(anchors) + semantic + prior
    return World(start, n_days, step, anchors.astype(np.float32), trends.astype(np.float32), items,
                 prior.astype(np.float32), born, (semantic + prior).astype(np.float32))


def _sessions(world: World, s: DictConfig, chunk: int, n_sessions: int) -> pd.DataFrame:
    """Simulate `n_sessions` sessions with the chunk's own seeded stream."""
    rng = np.random.default_rng([s.seed, 1, chunk])
    seconds = world.n_days * 86400
    begin = rng.integers(0, seconds, size=n_sessions)
    # Longest first, so the sessions still running at step k are a prefix [:active].
    length = -np.sort(-(2 + rng.geometric(1 / max(s.mean_session_events - 1, 1), size=n_sessions)))
    users = rng.integers(1, s.n_users + 1, size=n_sessions)
    steps = int(length.max())
    clusters = np.empty((n_sessions, steps), dtype=np.int32)
    offsets = np.cumsum(rng.exponential(s.mean_event_gap_s, size=(n_sessions, steps)), axis=1).astype(np.int64)
    ts = begin[:, None] + offsets
    day = np.minimum(ts // 86400, world.n_days - 1)
    a = b = world.starts(rng, day[:, 0])
    clusters[:, 0] = b
    for k in range(1, steps):
        active = int(np.count_nonzero(length > k))
        a, b = a[:active], b[:active]
        logits = world.logits(day[:active, k], a, b)
        moved = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
        stay = rng.random(active) < s.repeat_prob
        nxt = np.where(stay, b, moved)
        a, b = np.where(stay, a, b), nxt
        clusters[:active, k] = nxt
    keep = (np.arange(steps)[None, :] < length[:, None]) & (ts < seconds)
    rows = np.nonzero(keep)
    cl = clusters[rows]
    item = world.items[cl, rng.integers(0, world.items.shape[1], size=len(cl))]
    engagement = rng.uniform(0.5, 1.0, size=len(cl))
    negative = rng.random(len(cl)) < s.negative_share
    # A negative event is a skipped random item: it is noise in the log, not a step of the chain.
    item[negative] = world.items.ravel()[rng.integers(0, world.items.size, size=int(negative.sum()))]
    engagement[negative] = rng.uniform(0.0, 0.5, size=int(negative.sum()))
    unknown = rng.random(len(cl)) < s.unknown_item_share
    item[unknown] = world.items.size + 1 + rng.integers(0, 1000, size=int(unknown.sum()))
    when = world.start.astype("datetime64[us]") + ts[rows].astype("timedelta64[s]")
    return pd.DataFrame({"user_id": users[rows[0]].astype(np.int64), "item_id": item,
                         "ts": pd.DatetimeIndex(when).tz_localize("UTC"), "engagement": engagement.astype(np.float32)})


def generate(s: DictConfig, time_range, out_dir: Path | str) -> dict:
    """Write events/ (one Parquet part per chunk), items and clusters for the settings `s`.

    Parts accumulate in `<out_dir>.partial/`, each written atomically, so a killed run
    resumes where it stopped (with the same settings); `out_dir` is replaced only at the end.
    """
    out_dir = Path(out_dir)
    partial = out_dir.with_name(out_dir.name + ".partial")
    settings = json.dumps({"synth": OmegaConf.to_container(s), "time_range": OmegaConf.to_container(time_range)},
                          sort_keys=True)
    stamp = partial / "settings.json"
    refuse_foreign(out_dir)
    if partial.exists() and not stamp.exists():
        raise ValueError(f"{partial}: exists and is not a generation this command left (no settings.json); "
                         "nothing was replaced: move it away")
    if partial.exists() and stamp.read_text() != settings:
        shutil.rmtree(partial)  # left by a run with other settings: its parts do not fit
    (partial / "events").mkdir(parents=True, exist_ok=True)
    stamp.write_text(settings)
    world = build_world(s, time_range)
    sessions_per_chunk = max(1, int(s.chunk_events / s.mean_session_events))
    written = chunk = 0
    with Progress() as bar:
        task = bar.add_task("synth events", total=s.n_events)
        while written < s.n_events:
            part = partial / "events" / f"part-{chunk:05d}.parquet"
            if part.exists():
                written += pq.read_metadata(part).num_rows
            else:
                frame = _sessions(world, s, chunk, sessions_per_chunk).iloc[: s.n_events - written]
                with atomic_path(part) as tmp:
                    pq.write_table(pa.Table.from_pandas(frame, schema=contract.EVENTS_SCHEMA, preserve_index=False),
                                   tmp)
                written += len(frame)
            chunk += 1
            bar.update(task, completed=written)
    keywords = cluster_keywords(s.n_clusters)
    c = len(keywords)
    contract.write(partial,
                   items=pa.table({"item_id": world.items.ravel(),
                                   "cluster_id": np.repeat(np.arange(c, dtype=np.int32), world.items.shape[1])}),
                   clusters=pa.table({"cluster_id": np.arange(c, dtype=np.int32), "keywords": keywords}))
    stamp.unlink()
    with atomic_path(out_dir) as tmp:
        partial.rename(tmp)
    return {"events": written, "clusters": c, "items": int(world.items.size), "parts": chunk}
