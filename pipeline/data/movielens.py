"""MovieLens latest-small (GroupLens) -> the data contract (docs/data-contract.md).

Events are ratings: user_id = userId, item_id = movieId, ts = the rating's epoch seconds
(UTC), engagement = rating / 5; data.min_engagement (0.8: four stars or more) is the
positive threshold extract applies.

Items are movies, clustered by genre and described by genres plus user tags:
- a movie's key is its two most specific genres (rarest first by global movie count);
- keys held by fewer than clustering.min_movies movies fall back to the single most
  specific genre; a single genre still under min_movies, or never tagged, joins the
  largest kept key holding the movie's rarest genre possible;
- movies with '(no genres listed)' (or no kept key) form a catch-all cluster, keywords
  clustering.catch_all;
- keywords are the key's genres, lower-cased, plus up to clustering.max_tags of the
  cluster's most frequent user tags (by tagged movies, then tag applications, then
  alphabetically) that are no genre name, no stop tag and not taken by an earlier cluster
  (a single-genre cluster whose tags are all taken reuses its top tag).
Clusters are numbered by size (largest first, then by key), the catch-all last. The raw
README.txt (the licence) is copied next to the output.
"""
from __future__ import annotations

import shutil
from collections import Counter, defaultdict
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig

from pipeline.data import contract
from pipeline.files import atomic_path, refuse_foreign

NO_GENRES = "(no genres listed)"
CATCH_ALL = ()  # the catch-all's key


# The raw files' columns, typed up front: nothing is sniffed.
COLUMNS = {
    "ratings": {"userId": "BIGINT", "movieId": "BIGINT", "rating": "DOUBLE", "timestamp": "BIGINT"},
    "movies": {"movieId": "BIGINT", "title": "VARCHAR", "genres": "VARCHAR"},
    "tags": {"userId": "BIGINT", "movieId": "BIGINT", "tag": "VARCHAR", "timestamp": "BIGINT"},
}


def _csv(source: Path, name: str) -> str:
    """read_csv of raw file `name` with the RFC 4180 dialect and fixed column types."""
    path = "'" + str(source / f"{name}.csv").replace("'", "''") + "'"
    cols = ", ".join(f"'{column}': '{kind}'" for column, kind in COLUMNS[name].items())
    return f"read_csv({path}, header = true, delim = ',', quote = '\"', escape = '\"', columns = {{{cols}}})"


def normalise_tag(tag: str) -> str:
    """Lower case, commas removed, whitespace collapsed and trimmed."""
    return " ".join(tag.replace(",", " ").lower().split())


def cluster_keys(movies: dict[int, list[str]], tagged: set[int], min_movies: int) -> dict[int, tuple[str, ...]]:
    """Each movie's key: one or two of its genres, rarest first; CATCH_ALL when no key fits.

    A key is the movie's two most specific genres if min_movies movies share them, else its
    most specific genre. A single genre with fewer movies, or none of them tagged (it could
    not get a second keyword), is dissolved: its movies join the largest kept key that holds
    their most specific genre possible, or the catch-all.
    """
    counts = Counter(g for genres in movies.values() for g in genres)
    specific = {m: sorted(genres, key=lambda g: (counts[g], g)) for m, genres in movies.items()}
    pairs = Counter(tuple(g[:2]) for g in specific.values() if len(g) >= 2)
    keys = {m: tuple(g[:2]) if len(g) >= 2 and pairs[tuple(g[:2])] >= min_movies else tuple(g[:1])
            for m, g in specific.items()}
    size = Counter(keys.values())
    has_tags = {keys[m] for m in tagged if m in keys}
    kept = sorted((k for k in size if len(k) == 2 or (len(k) == 1 and size[k] >= min_movies and k in has_tags)),
                  key=lambda k: (-size[k], k))
    def fold(genres: list[str]) -> tuple[str, ...]:
        return next((k for g in genres for k in kept if g in k), CATCH_ALL)
    return {m: k if k in kept else fold(specific[m]) for m, k in keys.items()}


def cluster(movies: dict[int, list[str]], tags: list[tuple[int, str]], c: DictConfig
            ) -> tuple[dict[int, int], list[list[str]]]:
    """Movie -> cluster_id, and each cluster's keywords; clusters go largest first, catch-all last."""
    genres = {g for names in movies.values() for g in names}
    stop = {normalise_tag(t) for t in [*c.stop_tags, *genres, NO_GENRES]}
    usable = [(m, t) for m, tag in tags if m in movies and (t := normalise_tag(tag)) and t not in stop]
    keys = cluster_keys(movies, {m for m, _ in usable}, c.min_movies)
    movies_with, applications = defaultdict(set), Counter()
    for movie, t in usable:
        movies_with[keys[movie], t].add(movie)
        applications[keys[movie], t] += 1
    size = Counter(keys.values())
    order = sorted(size, key=lambda k: (k == CATCH_ALL, -size[k], k))
    taken: set[str] = set()
    keywords = []
    for key in order:
        base = [normalise_tag(t) for t in c.catch_all] if key == CATCH_ALL else [g.lower() for g in key]
        ranked = [t for t in sorted((t for k, t in applications if k == key),
                                    key=lambda t: (-len(movies_with[key, t]), -applications[key, t], t))
                  if t not in base]
        extra = [t for t in ranked if t not in taken][: c.max_tags]
        if len(base) + len(extra) < contract.MIN_KEYWORDS:  # all its tags are taken: reuse one
            extra = ranked[: contract.MIN_KEYWORDS - len(base)]
        words = (base + extra)[: contract.MAX_KEYWORDS]
        if len(words) < contract.MIN_KEYWORDS:
            raise ValueError(f"data.clustering: cluster {key or 'catch-all'} has only keywords {words}")
        taken.update(extra)
        keywords.append(words)
    cluster_id = {k: i for i, k in enumerate(order)}
    return {m: cluster_id[k] for m, k in keys.items()}, keywords


def convert(cfg: DictConfig, out_dir: Path | str) -> dict:
    """Write events/items/clusters for MovieLens from `cfg.source` into `out_dir` (replaced atomically)."""
    source = Path(cfg.source)
    refuse_foreign(out_dir)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    movies = {m: [g for g in genres.split("|") if g != NO_GENRES]
              for m, genres in con.execute(f"SELECT movieId, genres FROM {_csv(source, 'movies')}").fetchall()}
    tags = con.execute(f"SELECT movieId, tag FROM {_csv(source, 'tags')} WHERE tag IS NOT NULL "
                       "ORDER BY movieId, tag, userId").fetchall()
    cluster_id, keywords = cluster(movies, tags, cfg.clustering)
    item_ids = sorted(cluster_id)
    # Sorted by (user_id, ts, item_id): a user rates a movie once, so the order is total.
    events = con.sql(f"SELECT userId AS user_id, movieId AS item_id, make_timestamp(timestamp * 1000000) AS ts, "
                     f"(rating / 5)::FLOAT AS engagement FROM {_csv(source, 'ratings')} "
                     "ORDER BY user_id, ts, item_id").to_arrow_table()
    events = events.cast(contract.EVENTS_SCHEMA)  # naive UTC wall time -> timestamp[us, UTC]
    positive = pc.mean(pc.greater_equal(events["engagement"], cfg.min_engagement)).as_py()
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        pq.write_table(events, tmp / "events.parquet")
        contract.write(tmp,
                       items=pa.table({"item_id": pa.array(item_ids, pa.int64()),
                                       "cluster_id": pa.array([cluster_id[m] for m in item_ids], pa.int32())}),
                       clusters=pa.table({"cluster_id": pa.array(range(len(keywords)), pa.int32()),
                                          "keywords": keywords}))
        if (source / "README.txt").exists():
            shutil.copyfile(source / "README.txt", tmp / "README.txt")
        # Validate before the new folder replaces the old one.
        contract.register(duckdb.connect(), tmp, cfg.time_range, "error", max_keyword_chars=cfg.max_keyword_chars,
                          engagement_range=cfg.engagement_range)
    return {"events": len(events), "items": len(item_ids), "clusters": len(keywords),
            "positive_share": round(positive or 0.0, 4)}
