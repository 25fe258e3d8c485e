"""Evidence-position buckets (bench/report/position.py) and NER's per-third entity counts, by hand."""
from __future__ import annotations

from ctxbench.bench.report.position import NO_GOLD, ner_thirds, qa_offset, qa_third
from ctxbench.tasks.ner import counts_by_third, doc_counts


def test_qa_buckets_by_third_and_by_budget():
    rows = [{"i": 0, "answer_token": 0, "n_tokens": 90, "budget": 32},
            {"i": 1, "answer_token": 45, "n_tokens": 90, "budget": 32},
            {"i": 2, "answer_token": 89, "n_tokens": 90, "budget": 32},
            {"i": 3, "answer_token": None, "n_tokens": 90, "budget": 32},
            {"i": 4, "n_tokens": 90, "budget": 32}]  # an old sidecar row: no position, no bucket
    assert [r["bucket"] for r in qa_third(rows)] == ["1st third", "2nd third", "3rd third", NO_GOLD, None]
    assert [r["bucket"] for r in qa_offset(rows)] == ["1: start < b", "2: b ≤ start < 2b", "3: start ≥ 2b", NO_GOLD,
                                                      None]


def test_ner_counts_by_third_sum_to_the_document_and_explode_keeping_the_document_as_unit():
    gold = ["B-PER", "O", "O", "B-LOC", "I-LOC", "O", "O", "O", "B-ORG"]
    pred = ["B-PER", "O", "O", "B-LOC", "O", "O", "B-ORG", "O", "O"]
    by = counts_by_third(gold, pred)
    assert by == {"1st third": [1, 0, 0], "2nd third": [0, 1, 1], "3rd third": [0, 1, 1]}
    assert [sum(v[k] for v in by.values()) for k in range(3)] == list(doc_counts(gold, pred))
    rows = ner_thirds([{"i": 7, "tp": 1, "fp": 2, "fn": 2, "by_third": by}])
    assert {r["cluster"] for r in rows} == {"doc:7"} and len({r["i"] for r in rows}) == 3
    assert sum(r["fp"] for r in rows) == 2
