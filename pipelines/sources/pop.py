"""pop: the pool's most clicked articles (all history before the cutoff), the same list for everyone."""

from __future__ import annotations

import numpy as np

from pipelines.columns import ARTICLE_ID, CLICKS
from pipelines.sources.base import CandidateSource, Ranked, register, top_of_order


@register
class Pop(CandidateSource):
    name = "pop"
    label = "popular"
    baseline = "popular"
    position = 30
    report_position = 10

    def propose(self, index, query, n, prepared) -> Ranked | None:
        if not len(index.pool):
            return None
        order = index.popular()
        return top_of_order(order[ARTICLE_ID].to_numpy(), order[CLICKS].to_numpy(dtype=np.float64), query.users,
                            query.read, n)
