"""Candidate sources are one seam: a source defined in one module, plus its params entries, reaches the candidate
columns, the fused list, the ranker's features, the evaluation's baselines, the model signature and the labels
of the API and the dashboard, with no other file touched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.errors import InputError
from pipelines.sources import base as sources

TESTS = Path(__file__).resolve().parent

# A whole new source, as its module would read under pipelines/sources/: the pool's newest articles.
NEWEST_MODULE = '''
import numpy as np

from pipelines.columns import ARTICLE_ID, CREATED_AT_TS
from pipelines.sources.base import CandidateSource, register, top_of_order


@register
class Newest(CandidateSource):
    name = "newest"
    label = "just published"
    baseline = "newest_first"
    position = 60
    report_position = 60

    def propose(self, index, query, n, prepared):
        order = index.pool.sort_values([CREATED_AT_TS, ARTICLE_ID], ascending=[False, True])
        return top_of_order(order[ARTICLE_ID].to_numpy(), order[CREATED_AT_TS].to_numpy(np.float64),
                            query.users, query.read, n)
'''

CHECK = '''
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import newest_source  # registers it, as pipelines.sources' discovery imports a module of its own

from clickdata import EPOCH, articles, at, clicks, write_raw, write_validated
from test_candidates import PARAMS, CREATED, TOPIC, _embeddings
from pipelines.aggregates import aggregate_all
from pipelines.candidates import OUTPUT_COLUMNS, CandidateIndex
from pipelines.errors import InputError
from pipelines.evaluate import BASELINES, method_scores
from pipelines.features import FEATURES
from pipelines.bundle import signature
from serving.app import RecommendedArticle
from dashboard.data import SOURCE_NAMES
from pathlib import Path

root = Path(sys.argv[3])
rows = [(1, 100, 1, 2.1), (1, 100, 2, 2.2), (2, 200, 3, 8.1)]
write_validated(root, clicks(rows))
meta = articles(CREATED, categories=[TOPIC[i] for i in range(len(CREATED))])
write_raw(root, meta, _embeddings())
aggregate_all(root, EPOCH, 5)
params = {**PARAMS, "per_source": {**PARAMS["per_source"], "newest": 2},  # its params entry
          "fusion_weights": {**PARAMS["fusion_weights"], "newest": 0.3}}
index = CandidateIndex.fit(root, meta, _embeddings(), at(10), params, EPOCH)
cands = index.candidates(clicks(rows), users=[1, 2, 9])
try:
    CandidateIndex.fit(root, meta, _embeddings(), at(10), {**params, "per_source": {"nwest": 2}}, EPOCH)
    rejected = None
except InputError as e:
    rejected = str(e)
print(json.dumps({
    "columns": list(cands.columns), "output_columns": OUTPUT_COLUMNS,
    "newest": cands.loc[cands["newest_rank"] > 0].sort_values(["user_id", "newest_rank"])[
        ["user_id", "article_id"]].values.tolist(),
    "fused_newest": bool((cands.loc[cands["newest_rank"] > 0, "fused_score"] > 0).all()),
    "features": FEATURES, "baselines": BASELINES, "methods": sorted(method_scores(cands, {})),
    "signature": [c.name for c in signature().inputs.inputs],
    "api": RecommendedArticle.model_json_schema()["properties"]["sources"]["description"],
    "dashboard": SOURCE_NAMES, "rejected": rejected,
}))
'''


@pytest.mark.unit
def test_a_new_source_in_one_module_reaches_every_list_of_sources(tmp_path):
    (tmp_path / "newest_source.py").write_text(NEWEST_MODULE)
    done = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path), str(TESTS), str(tmp_path / "world")],
                          check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    new_columns = ["newest_score", "newest_rank"]
    assert got["columns"] == got["output_columns"]
    assert got["output_columns"][got["output_columns"].index("learned_rank") + 1:][:2] == new_columns
    # Pool 0..5, newest first 5, 4, ...: user 1 (read 1, 2) and user 2 (read 3) get the two newest; so does
    # user 9, who has no history.
    assert got["newest"] == [[1, 5], [1, 4], [2, 5], [2, 4], [9, 5], [9, 4]]
    assert got["fused_newest"]
    assert set(new_columns) <= set(got["features"])
    assert got["baselines"]["newest_first"] == "newest" and list(got["baselines"])[-1] == "fusion"
    assert "newest_first" in got["methods"]
    assert set(new_columns) <= set(got["signature"])
    assert "newest" in got["api"]
    assert got["dashboard"]["newest"] == "just published"
    assert got["rejected"] is not None and "'nwest'" in got["rejected"] and "newest" in got["rejected"]


@pytest.mark.unit
def test_the_registry_lists_the_sources_in_column_order():
    assert sources.names() == ["emb", "cocl", "pop", "trend", "learned"]
    assert list(sources.baselines()) == ["popular", "trending", "cocl", "emb_knn", "learned"]
    assert sources.row_columns() == ["learned_sim"] and sources.optional() == {"learned"}


@pytest.mark.unit
def test_a_source_registered_after_the_list_was_read_is_refused():
    sources.names()

    class Late(sources.CandidateSource):
        name, label, baseline, position, report_position = "late", "late", "late", 99, 99

    with pytest.raises(RuntimeError, match="after the source list was read"):
        sources.register(Late)


@pytest.mark.unit
def test_unknown_source_names_in_params_are_refused():
    with pytest.raises(InputError, match=r"unknown candidate source\(s\) \['embb'\] in candidates.fusion_weights"):
        sources.check_names({"embb": 1.0}, "candidates.fusion_weights")
