"""Support buckets (eval.support_buckets): a pair's support in the retrieval window sorts it into
cold, tail, torso or head. Count's realism figures and evaluate's by-support table share them."""
from __future__ import annotations

import numpy as np


def bucket_of(support, bounds: dict[str, int]) -> np.ndarray:
    """Each support's bucket: the name in `bounds` (ascending lower bounds from 0) it reaches."""
    lows = list(bounds.values())
    if not lows or lows[0] != 0 or any(a >= b for a, b in zip(lows, lows[1:])):
        raise ValueError(f"params.yaml: eval.support_buckets is {dict(bounds)}: lower bounds must start at 0 "
                         "and ascend")
    return np.array(list(bounds))[np.searchsorted(np.array(lows), np.asarray(support), side="right") - 1]
