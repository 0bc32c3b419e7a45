"""trend: the pool by decayed recent clicks (newest first among ties: fresh stories surface)."""

from __future__ import annotations

import numpy as np

from pipelines.columns import ARTICLE_ID, TREND
from pipelines.sources.base import CandidateSource, Ranked, register, top_of_order


@register
class Trend(CandidateSource):
    name = "trend"
    label = "trending now"
    baseline = "trending"
    position = 40
    report_position = 20

    def propose(self, index, query, n, prepared) -> Ranked | None:
        if not len(index.pool):
            return None
        order = index.trending()
        return top_of_order(order[ARTICLE_ID].to_numpy(), order[TREND].to_numpy(dtype=np.float64), query.users,
                            query.read, n)
