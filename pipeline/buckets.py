"""Support buckets (evaluate.support_buckets): a pair's support in the retrieval window sorts it into
cold, tail, torso or head. Count's realism figures and evaluate's by-support table share them."""
from __future__ import annotations

import numpy as np


def bucket_of(support, bounds: dict[str, int]) -> np.ndarray:
    """Each support's bucket: the name in `bounds` (ascending lower bounds from 0) it reaches."""
    # The schema (pipeline/schema.py) holds the bounds to ascending from 0.
    return np.array(list(bounds))[np.searchsorted(np.array(list(bounds.values())), np.asarray(support),
                                                  side="right") - 1]
