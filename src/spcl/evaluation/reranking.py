"""k-reciprocal re-ranking (SPEC section 8). Placeholder until implemented."""

from __future__ import annotations


def re_rank(query_features, gallery_features, k1: int = 20, k2: int = 6, lambda_value: float = 0.3):
    raise NotImplementedError("re_rank is not implemented yet")
