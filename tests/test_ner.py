"""The NER task adapter through the real runner, on a tiny random BERT and inline tweets.

Inline documents are injected by replacing ``ctxbench.tasks.ner.load_source`` for the dataset
name ``inline``; everything after loading (validation, alignment, windows, training,
stitching, scoring, the sidecar and the leaderboard) is the production path.
"""
from __future__ import annotations

import json
import random

import pytest
import torch

from ctxbench.bench.config import load_sweep
from ctxbench.bench.results import read_jsonl
from ctxbench.bench.run.runner import run_sweep
from ctxbench.bench.report.tables import leaderboard
from ctxbench.strategies import ConfigError
from ctxbench.tasks import Context, ner
from ctxbench.tasks.data.ner_data import NerDoc, align, first_subtoken_labels, subtoken_to_word

from tests.conftest import FILLER

PEOPLE = ["alice", "bob", "carol", "dave"]
SURNAMES = ["smith", "jones", "brown"]
PLACES = ["paris", "london", "berlin", "tokyo"]
LABELS = ["B-geo-loc", "B-person", "I-person", "O"]
ALL = ["strategies=[head, tail, head_tail, {name: sliding, pool: max}, {name: sliding, pool: mean},"
       " {name: hierarchical, pool: mean}]"]


def make_tweet(rng: random.Random, doc_id: str, n_words: int, late_entity: bool = False) -> NerDoc:
    """Filler words with a person (1-2 words) and a place planted; ``late_entity`` puts a place last."""
    words = [rng.choice(FILLER) for _ in range(n_words)]
    tags = ["O"] * n_words
    k = rng.randrange(max(1, n_words - 2))
    words[k], tags[k] = rng.choice(PEOPLE), "B-person"
    if k + 1 < n_words and rng.random() < 0.5:
        words[k + 1], tags[k + 1] = rng.choice(SURNAMES), "I-person"
    j = rng.randrange(n_words)
    if tags[j] == "O":
        words[j], tags[j] = rng.choice(PLACES), "B-geo-loc"
    if late_entity:
        words[-1], tags[-1] = rng.choice(PLACES), "B-geo-loc"
    return NerDoc(doc_id, words, tags)


def inline_splits() -> dict[str, list[NerDoc]]:
    rng = random.Random(0)
    out = {s: [make_tweet(rng, f"{s}-{i}", rng.randint(4, 40)) for i in range(n)]
           for s, n in (("train", 40), ("val", 12))}
    test = [make_tweet(rng, f"test-{i}", rng.randint(24, 45), late_entity=True) for i in range(14)]
    test.append(NerDoc("test-empty", [], []))  # zero words: kept, counted, no model input
    test.append(NerDoc("test-zw", ["alice", "\u200b", "went", "to", "paris"], ["B-person", "O", "O", "O", "B-geo-loc"]))
    out["test"] = test
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's kernels are microseconds long: a second thread only adds sync cost."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture()
def inline(monkeypatch):
    splits = inline_splits()
    real = ner.load_source

    def load_source(name):
        if name == "inline":
            return {k: list(v) for k, v in splits.items()}, list(LABELS)
        return real(name)

    monkeypatch.setattr(ner, "load_source", load_source)
    return splits


def sweep_for(model, *extra):
    return load_sweep("ner", [f"model={model}", "dataset=inline", "limits.train=null", "limits.val=null",
                              "limits.test=null", "train.epochs=2", "train.lr=0.001", "train.batch_size=16",
                              "seeds=[0]", "budgets=[16]", "batch_size=16", *extra])


def run(sweep, root):
    return run_sweep(sweep, root, ctx=Context(device=torch.device("cpu"), progress=False), progress=False)


def sidecar(root, record) -> list[dict]:
    path = root / "ner" / record["predictions_file"]
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def ran(tiny_model, tmp_path_factory):
    """One grid (6 strategies x budgets 16, 64) shared by the tests that read its records."""
    tmp = tmp_path_factory.mktemp("ner-grid")
    splits = inline_splits()
    real = ner.load_source
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CTXBENCH_CACHE", str(tmp / "cache"))
        mp.setattr(ner, "load_source", lambda name: ({k: list(v) for k, v in splits.items()}, list(LABELS))
                   if name == "inline" else real(name))
        sweep = sweep_for(tiny_model, *ALL, "budgets=[16,64]")
        summary = run(sweep, tmp / "results")
    runs = read_jsonl(tmp / "results" / "ner" / "runs.jsonl")
    return sweep, summary, {(r["spec"]["strategy"]["label"], r["budget"]): r for r in runs}, tmp / "results"


# ---------------------------------------------------------------- the grid


def test_every_cell_runs_and_the_table_has_ci(ran):
    sweep, summary, runs, root = ran
    assert summary.ok and summary.ran == len(sweep.cells()) == 12, summary.failed
    for r in runs.values():
        m = r["metrics"]
        for k in ("f1", "precision", "recall", "token_accuracy", "entities_unseen", "words_unseen"):
            assert 0.0 <= m[k] <= 1.0, (k, m[k])
        assert r["data_label"] == "gold" and r["main_metric"] == "f1"
        meas = r["measurements"]
        assert meas["docs_per_s"] > 0 and meas["padded_tokens"] >= meas["real_tokens"]
        assert r["info"]["empty_docs_test"] == 1 and r["info"]["words_without_subtokens_test"] == 1
        buckets = [b for b in ("<=b", "b-2b", "2b-4b", ">4b") if m[f"bucket[{b}].n"]]
        assert sum(m[f"bucket[{b}].n"] for b in buckets) == meas["docs"] and len(buckets) >= (r["budget"] == 16) + 1
        for b in buckets:  # every metric per length bucket, as in classification
            for k in ("f1", "precision", "recall", "token_accuracy", "entities_unseen"):
                assert 0.0 <= m[f"bucket[{b}].{k}"] <= 1.0, (b, k)
    board = leaderboard(runs.values(), root=root / "ner")
    assert board.cells["ci_lo"].notna().all()  # the sidecar's tp/fp/fn reproduce every recorded F1
    for r in runs.values():  # entity counts by the third of the document they start in add up to the document's
        for row in sidecar(root, r):
            assert [sum(c[k] for c in row["by_third"].values()) for k in range(3)] == [row["tp"], row["fp"], row["fn"]]
    from ctxbench.bench.report.position import position_tables

    text = position_tables(list(runs.values()), root / "ner")
    assert "NER: entity micro-F1 by the third of the document the entity starts in" in text and "1st third" in text


def test_sliding_and_hierarchical_predict_every_word_of_long_documents(ran):
    _, _, runs, root = ran
    for label in ("sliding[pool=max]", "sliding[pool=mean]", "hierarchical[pool=mean]"):
        r = runs[(label, 16)]
        assert r["metrics"]["words_unseen"] == 0.0 and r["metrics"]["entities_unseen"] == 0.0
        rows = sidecar(root, r)
        assert sum(row["n_tokens"] > 16 for row in rows) >= 10  # the documents are longer than the budget
        for row in rows:
            assert row["words_unseen"] == 0 and len(row["pred"]) == row["n_words"]
    assert runs[("sliding[pool=max]", 16)]["info"]["stitch"] == "max_context"
    assert runs[("sliding[pool=mean]", 16)]["info"]["stitch"] == "mean"
    assert runs[("hierarchical[pool=mean]", 16)]["info"]["doc_context"] is True


def test_head_leaves_words_unseen_scored_o_and_counted(ran):
    _, _, runs, root = ran
    r = runs[("head", 16)]
    assert r["metrics"]["words_unseen"] > 0.3
    # every long test document ends in a place no 16-token head window reaches
    assert r["metrics"]["entities_unseen_n"] >= 14 and r["metrics"]["entities_unseen"] > 0.3
    for row in sidecar(root, r):
        if row["n_tokens"] > 16:
            assert row["pred"][-1] == "O" and row["fn"] >= row["unseen_entities"] >= 1
    assert r["metrics"]["recall"] <= 1.0 - r["metrics"]["entities_unseen"] + 1e-9


def test_pinned_token_accounting(ran, tiny_model):
    from transformers import AutoTokenizer

    _, _, runs, _ = ran
    tok = AutoTokenizer.from_pretrained(tiny_model)
    n = [len(align(tok, d.words).ids) for d in inline_splits()["test"]]
    head = runs[("head", 16)]["measurements"]
    assert head["real_tokens"] == sum(min(k, 16) + 2 for k in n if k)
    assert head["compute_multiplier"] == pytest.approx(sum(min(k, 16) + 2 for k in n if k) / sum(min(k, 16) + 2
                                                                                                  for k in n))
    assert runs[("sliding[pool=max]", 16)]["measurements"]["coverage"] == 1.0
    assert runs[("head", 64)]["measurements"]["coverage"] == 1.0  # every test document fits 64 tokens


def test_identical_training_inputs_train_once(ran):
    _, _, runs, _ = ran
    # at b=64 every document is one whole window: all window-level strategies train the same model
    b64 = [runs[(s, 64)] for s in ("head", "tail", "head_tail", "sliding[pool=max]", "sliding[pool=mean]")]
    assert [r["measurements"]["train_reused"] for r in b64] == [False, True, True, True, True]
    assert len({r["metrics"]["f1"] for r in b64}) == 1
    assert runs[("hierarchical[pool=mean]", 64)]["measurements"]["train_reused"] is False
    assert runs[("tail", 16)]["measurements"]["train_reused"] is False


# ---------------------------------------------------------------- modes


@pytest.mark.parametrize("extra", [["mode=probe", "train.epochs=3"]] + [
    [f"train.finetune={k}", "train.prefix_tokens=4", "train.lora_r=2", "train.adalora_init_r=4"]
    for k in ("full", "lora", "adalora", "prefix", "ia3")], ids=["probe", "full", "lora", "adalora", "prefix", "ia3"])
def test_probe_and_every_finetune_kind(tiny_model, inline, tmp_path, cache_env, extra):
    sweep = sweep_for(tiny_model, "strategies=[head, {name: sliding, pool: max}, {name: hierarchical, pool: max}]",
                      *extra)
    summary = run(sweep, tmp_path / "results")
    assert summary.ok, summary.failed
    runs = read_jsonl(tmp_path / "results" / "ner" / "runs.jsonl")
    kind = runs[0]["spec"]["train"]["finetune"] if runs[0]["spec"]["mode"] == "finetune" else "probe"
    for r in runs:
        m = r["measurements"]
        if kind == "full":
            assert m["trainable_params"] > m["total_params"] * 0.9  # the whole encoder trains
        else:  # probe: the head alone; a peft kind: adapters and head, never silently the whole encoder
            assert 0 < m["trainable_params"] < m["total_params"] / 5, (kind, m["trainable_params"])
        assert m["optimizer_steps"] > 0 and m["train_tokens_seen"] > 0
        assert 0.0 <= r["metrics"]["f1"] <= 1.0


def test_longest_entity_runs_through_the_runner_and_predicts_every_word(tiny_model, inline, tmp_path, cache_env):
    summary = run(sweep_for(tiny_model, "strategies=[{name: sliding, pool: max, last: short}]",
                            "ner.stitch=longest_entity"), tmp_path)
    assert summary.ok, summary.failed
    (r,) = read_jsonl(tmp_path / "ner" / "runs.jsonl")
    assert r["info"]["stitch"] == "longest_entity" and r["spec"]["ner"]["stitch"] == "longest_entity"
    assert r["metrics"]["words_unseen"] == 0.0
    rows = sidecar(tmp_path, r)
    assert all(len(row["pred"]) == row["n_words"] for row in rows) and sum(row["n_tokens"] > 16 for row in rows) >= 10
    assert all(t == "O" or t[:2] in ("B-", "I-") for row in rows for t in row["pred"])


def test_same_seed_same_metrics(tiny_model, inline, tmp_path, cache_env):
    sweep = sweep_for(tiny_model, "strategies=[{name: sliding, pool: max}]")
    run(sweep, tmp_path / "a")
    run(sweep, tmp_path / "b")
    a, b = (read_jsonl(tmp_path / x / "ner" / "runs.jsonl")[0]["metrics"] for x in ("a", "b"))
    assert a == b


# ---------------------------------------------------------------- folding and scoring


L3 = ["O", "B-X", "I-X"]  # three labels for hand-built logits


def test_fold_document_on_hand_built_logits():
    # 3 words, 4 sub-tokens: word 1 has two pieces. Windows (0, 3) and (1, 4); inputs carry one
    # special token on each side, whose rows hold huge values that must be stripped.
    word_ids, n_tokens = [0, 1, 1, 2], 4
    windows = [((0, 3),), ((1, 4),)]
    big = torch.full((1, 3), 1e6)
    a = torch.tensor([[0.0, 5, 0], [0, 0, 5], [5, 0, 0]])  # window A: tokens 0, 1, 2 -> labels 1, 2, 0
    b = torch.tensor([[0.0, 0, 4], [0, 4, 0], [0, 4, 0]])  # window B: tokens 1, 2, 3 -> labels 2, 1, 1
    logits = [torch.cat([big, a, big]), torch.cat([big, b, big])]
    # max context: token 1 -> A (score 1 vs 0), token 3 -> B (only one); word 1 is its first piece, token 1
    preds, seen = ner.fold_document(n_tokens, word_ids, 3, windows, logits, "max_context", L3, 0, prefix=1)
    assert preds == [1, 2, 1] and seen == [True, True, True]
    # mean: token 1 = mean(A[1], B[0]) = (0, 0, 4.5) -> label 2
    preds, _ = ner.fold_document(n_tokens, word_ids, 3, windows, logits, "mean", L3, 0, prefix=1)
    assert preds == [1, 2, 1]
    b2 = torch.tensor([[6.0, 0, 0], [0, 4, 0], [0, 4, 0]])  # now B outvotes A's token 1 in the mean only
    logits2 = [logits[0], torch.cat([big, b2, big])]
    assert ner.fold_document(n_tokens, word_ids, 3, windows, logits2, "max_context", L3, 0, 1)[0] == [1, 2, 1]
    assert ner.fold_document(n_tokens, word_ids, 3, windows, logits2, "mean", L3, 0, 1)[0] == [1, 0, 1]
    # longest_entity writes BIO tags itself: a label set without the B- it needs (IO tags) is refused
    with pytest.raises(ValueError, match=r"lacks \(it needs B- and I-"):
        ner.fold_document(n_tokens, word_ids, 3, [((0, 4),)], [torch.cat([big, torch.tensor(
            [[0.0, 5, 0], [0, 0, 5], [0, 0, 5], [0, 5, 0]]), big])], "longest_entity", ["O", "I-X", "I-Y"], 0, 1)
    # one head window over tokens 0-1: word 2 unseen -> the outside label, flagged unseen
    preds, seen = ner.fold_document(n_tokens, word_ids, 3, [((0, 2),)], [torch.cat([big, a[:2], big])],
                                    "max_context", L3, 0, prefix=1)
    assert preds == [1, 2, 0] and seen == [True, True, False]


def test_word_labels_round_trip_through_subtokens(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    words = ["Alice", "Smithsonianization", "went", "to", "\u200b", "São", "Paulo", "!!"]
    tags = [1, 2, 0, 0, 0, 3, 4, 0]
    al = align(tok, words)
    assert al.n_empty == 1 and len(set(al.word_ids)) == len(words) and len(al.ids) > len(words)
    token_labels = first_subtoken_labels(al.word_ids, tags)
    assert sum(x != -100 for x in token_labels) == len(words)
    assert subtoken_to_word(al.word_ids, token_labels, len(words)) == tags


def test_doc_counts_reproduce_seqeval():
    rng = random.Random(1)
    tags = ["O", "B-A", "I-A", "B-B", "I-B"]
    gold = [[rng.choice(tags) for _ in range(rng.randint(0, 12))] for _ in range(60)]
    gold = [["O" if t.startswith("I-") and (k == 0 or g[k - 1][2:] != t[2:]) else t for k, t in enumerate(g)]
            for g in gold]  # valid IOB2 gold
    pred = [[rng.choice(tags) for _ in g] for g in gold]
    scores = ner.seqeval_scores(gold, pred)
    counts = [ner.doc_counts(g, q) for g, q in zip(gold, pred)]
    assert ner.micro_f1(counts) == pytest.approx(scores["f1"], abs=1e-12)
    assert sum(c[0] + c[2] for c in counts) == scores["entities_gold"]


# ---------------------------------------------------------------- bad input


def test_bad_input_policies(tiny_model, monkeypatch):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    good = NerDoc("ok", ["alice", "went"], ["B-person", "O"])

    def spec_with(docs, *extra):
        monkeypatch.setattr(ner, "load_source", lambda name: ({"train": [good], "val": [good], "test": docs},
                                                              list(LABELS)))
        return sweep_for(tiny_model, *extra).cells()[0]

    with pytest.raises(ValueError, match="2 words but 1 tags"):
        ner.prepare_data(spec_with([NerDoc("bad-len", ["a", "b"], ["O"])]), tok)
    with pytest.raises(ValueError, match=r"not in the label set: \['B-ORG'\]"):
        ner.prepare_data(spec_with([NerDoc("bad-tag", ["acme"], ["B-ORG"])]), tok)
    with pytest.raises(ValueError, match="has no words"):
        ner.prepare_data(spec_with([good, NerDoc("empty", [], [])], "empty_docs=error"), tok)
    data = ner.prepare_data(spec_with([good, NerDoc("empty", [], [])]), tok)
    assert data.counts["empty_docs_test"] == 1 and data.ids["test"][1] == []
    data = ner.prepare_data(spec_with([NerDoc("zw", ["alice", "\u200b"], ["B-person", "O"])]), tok)
    assert data.counts["words_without_subtokens_test"] == 1 and len(data.ids["test"][0]) == 2
    monkeypatch.setattr(ner, "load_source", lambda name: ({"train": [good], "val": [good], "test": [good]},
                                                          ["B-person", "I-person"]))
    with pytest.raises(ConfigError, match="no 'O'"):
        ner.prepare_data(sweep_for(tiny_model).cells()[0], tok)


def test_strategy_options_without_token_meaning_are_refused():
    import ctxbench.strategies as strategies

    with pytest.raises(ConfigError, match="pool must be 'max'"):
        ner.stitch_method(strategies.build("sliding", pool="vote"))
    with pytest.raises(ConfigError, match="pool_over=embeddings"):
        ner.stitch_method(strategies.build("sliding", pool_over="embeddings"))
    assert ner.stitch_method(strategies.build("hierarchical", overlap=2)) == "max_context"


def test_empty_document_gets_no_windows():
    import ctxbench.strategies as strategies

    assert ner.doc_windows(strategies.build("head"), [[], [5, 6, 7]], 2) == [[], [((0, 2),)]]


# ---------------------------------------------------------------- export for the pipeline


def test_export_loads_as_token_classifier_with_the_same_logits(tiny_model, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer, pipeline

    from ctxbench.tasks.model.encoder import load_encoder

    enc = load_encoder(tiny_model, torch.device("cpu"))
    torch.manual_seed(0)
    model = ner.TokenModel(ner.TokenHead(32, len(LABELS)), enc.model, enc.tokenizer.pad_token_id,
                           torch.device("cpu")).eval()
    path = ner.export_token_classifier(model, LABELS, enc.tokenizer, tmp_path / "export", max_length=18)
    hf = AutoModelForTokenClassification.from_pretrained(path).eval()
    ids = [enc.tokenizer("alice went to paris")["input_ids"]]
    with torch.no_grad():
        ours = model([ids])[0]
        theirs = hf(input_ids=torch.tensor(ids)).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    wrapped = ner.from_token_classifier(hf, torch.device("cpu"), enc.tokenizer.pad_token_id)
    with torch.no_grad():
        assert torch.allclose(wrapped([ids])[0], theirs, atol=1e-5)
    pipe = pipeline("token-classification", model=hf, tokenizer=AutoTokenizer.from_pretrained(path),
                    aggregation_strategy="first", stride=4, device="cpu")
    out = pipe(" ".join(["alice went to paris"] * 10))
    assert isinstance(out, list)


# ---------------------------------------------------------------- real packaged data


@pytest.mark.slow
def test_end_to_end_on_real_wnut(tmp_path, cache_env):
    sweep = load_sweep("ner", ["limits.train=40", "limits.val=16", "limits.test=30", "train.epochs=1",
                               "seeds=[0]", "budgets=[16]", "batch_size=32",
                               "strategies=[head, {name: sliding, pool: max}, {name: hierarchical, pool: mean}]"])
    summary = run(sweep, tmp_path / "results")
    assert summary.ok, summary.failed
    runs = read_jsonl(tmp_path / "results" / "ner" / "runs.jsonl")
    assert {r["spec"]["strategy"]["name"] for r in runs} == {"head", "sliding", "hierarchical"}
    for r in runs:
        assert r["info"]["labels"] == 21 and r["info"]["docs_test"] == 30
        assert r["metrics"]["entities_gold"] > 0 and 0.0 <= r["metrics"]["f1"] <= 1.0
    by = {r["spec"]["strategy"]["name"]: r for r in runs}
    assert by["sliding"]["metrics"]["words_unseen"] == 0.0 and by["head"]["metrics"]["words_unseen"] > 0.0


def test_longest_entity_stitching_reproduces_the_hf_pipeline(tmp_path):
    """The pipeline's own chunking and entity merge (``stride``, ``aggregation_strategy="first"``) on a tiny
    random token classifier gives exactly our word tags under ``ner.stitch=longest_entity`` with
    ``sliding(last=short)``: the like-for-like mode the NER parity benchmark relies on."""
    import ctxbench.strategies as strategies
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification, pipeline

    from ctxbench.bench.studies.ner_parity import entities_to_tags
    from ctxbench.tasks.model.packaged import minilm_path

    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    window, overlap = 12, 4
    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.model_max_length = window + tok.num_special_tokens_to_add(pair=False)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=len(labels),
                     id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)})
    hf = BertForTokenClassification(cfg).eval()
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    # random letters give multi-piece words (so windows cut words); words with punctuation inside are split by
    # WordPiece into pieces without '##', which the pipeline reads as words of their own
    odd = ["u.s.", "don't", "well-known", "e-mail", "3.5", "a/b", "\u200b"]  # the last has no sub-token

    def word() -> str:
        r = rng.random()
        return (rng.choice(FILLER + PEOPLE) if r < 0.5 else rng.choice(odd) if r < 0.65
                else "".join(rng.choices(letters, k=rng.randint(5, 12))))

    docs = [[word() for _ in range(rng.randint(5, 40))] for _ in range(12)]
    pipe = pipeline("token-classification", model=hf, tokenizer=tok, aggregation_strategy="first", stride=overlap,
                    device=torch.device("cpu"))
    theirs = [entities_to_tags(e, w) for e, w in zip(pipe(docs, is_split_into_words=True), docs)]
    model = ner.from_token_classifier(hf, torch.device("cpu"), tok.pad_token_id)
    strategy = strategies.build("sliding", window=window, overlap=overlap, last="short", pool="max")
    ours = ner.tag_documents(model, tok, docs, strategy, window, labels, 8, stitch_rule="longest_entity",
                             empty_words="drop")
    assert ours == theirs
    assert any("\u200b" in d for d in docs)
    assert sum(t != "O" for d in ours for t in d) > 20  # the random model does tag entities
    n_long = sum(len(align(tok, d).ids) > window for d in docs)
    assert n_long >= 6  # several windows per document, so overlaps are resolved
    max_ctx = ner.tag_documents(model, tok, docs, strategy, window, labels, 8)
    assert max_ctx != ours  # the two rules differ on these documents; the test exercises the merge
    with pytest.raises(ConfigError, match="longest_entity"):
        ner.stitch_method(strategies.build("hierarchical"), "longest_entity")


@pytest.mark.slow
def test_end_to_end_on_real_silver_long_articles(tmp_path, cache_env, monkeypatch):
    """The long-document path on real packaged data: NewsArticles tagged by spaCy at prepare time (a few
    articles, so CI stays fast), the real MiniLM, windows of 128, both stitching families; every table
    line says silver."""
    from ctxbench.tasks.data import ner_data

    real = ner.load_source

    def few(name):
        if name != "news_silver":
            return real(name)
        tr, va, te = ner_data.split_docs(ner_data.load_news_silver(limit=16))
        return {"train": tr, "val": va, "test": te}, ner_data.silver_label_set()

    monkeypatch.setattr(ner, "load_source", few)
    sweep = load_sweep("ner", ["dataset=news_silver", "train.epochs=2", "train.lr=5e-4", "seeds=[0]", "budgets=[128]",
                               "batch_size=16", "train.max_windows_train=2",
                               "strategies=[head, {name: sliding, pool: max, last: short}]"])
    summary = run(sweep, tmp_path / "results")
    assert summary.ok, summary.failed
    runs = {r["spec"]["strategy"]["name"]: r for r in read_jsonl(tmp_path / "results" / "ner" / "runs.jsonl")}
    for r in runs.values():
        assert r["data_label"] == "silver" and r["metrics"]["entities_gold"] > 0
    assert runs["sliding"]["metrics"]["words_unseen"] == 0.0 and runs["head"]["metrics"]["entities_unseen"] > 0.3
    assert runs["sliding"]["measurements"]["windows_per_doc"] > 2  # the articles are several windows long
    board = leaderboard(runs.values(), root=tmp_path / "results" / "ner").markdown()
    assert "silver" in board and "sliding[last=short,pool=max]" in board


def test_fine_tuned_strategies_take_equal_steps_counted_in_documents(tiny_model, inline, tmp_path, cache_env):
    """NER makes one training example per window for window-level strategies: equal steps must count the
    documents, so head and sliding take the same steps by default, and sliding takes more under the epoch rule."""
    n_docs = len(inline["train"])
    steps = {}
    for schedule in ("auto", "epochs"):
        sweep = sweep_for(tiny_model, "strategies=[head, {name: sliding, pool: max}]", "train.finetune=lora",
                          "train.lora_r=2", "train.epochs=1", f"train.schedule={schedule}", "cost_repeats=0")
        assert run(sweep, tmp_path / schedule).ok
        for r in read_jsonl(tmp_path / schedule / "ner" / "runs.jsonl"):
            steps[schedule, r["spec"]["strategy"]["name"]] = r["measurements"]["optimizer_steps"]
    assert steps["auto", "head"] == steps["auto", "sliding"] == -(-n_docs // 16)
    assert steps["epochs", "sliding"] > steps["epochs", "head"]
