"""Extractive QA data (SQuAD v1.1 format) and multi-paragraph contexts.

Built-in sources come from the ``bigbench==1.0.0`` sdist on PyPI (no hub):
``squad_dev`` (SQuAD v1.1 dev as shipped there: 48 articles, 2,067 paragraphs,
10,565 questions; BIG-bench dropped 5 of the official 10,570) and the
SQuAD-shifts sets ``new_wiki``, ``nyt``, ``reddit``, ``amazon_reviews``. Any
other name is a hub dataset id in the flat SQuAD layout (connected users).

Long contexts are made by joining a question's gold paragraph with ``k``
neighbouring paragraphs of the same article (``build_examples``), so the task
length is controlled while the answer offsets stay exact.
"""
from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets

from ctxbench.tasks.model.packaged import offline
from ctxbench.tasks.cache import atomic_write_bytes, cache_dir, file_hash
from ctxbench.strategies import ConfigError, did_you_mean

BIGBENCH_REQ = "bigbench==1.0.0"
MEMBER_DIR = "benchmark_tasks/squad_shifts/"
BUILTIN_FILES = {
    "squad_dev": "squaddev_v1.1.json",
    "new_wiki": "new_wiki_v1.0.json",
    "nyt": "nyt_v1.0.json",
    "reddit": "reddit_v1.0.json",
    "amazon_reviews": "amazon_reviews_v1.0.json",
}
# pip >= 26 rejects PyPI sdists whose metadata declares a direct URL dependency,
# even for `download --no-deps`; bigbench 1.0.0 declares `bleurt @ file://...`.
# pip 25.3 (run from its wheel, nothing installed) downloads it as before.
FALLBACK_PIP = "pip==25.3"
_PIP_REJECTS = "cannot declare direct URL dependencies"
SEP = "\n\n"


# ---------------------------------------------------------------- records

@dataclass
class QA:
    id: str
    question: str
    answers: list[str]
    answer_starts: list[int]


@dataclass
class Paragraph:
    context: str
    qas: list[QA]


@dataclass
class Article:
    title: str
    paragraphs: list[Paragraph]


@dataclass
class Example:
    """One question over a (possibly multi-paragraph) context.

    ``answer_starts`` is parallel to ``answers``; ``-1`` marks an answer whose
    text is not at its offset (kept for EM/F1, never used as a gold span).
    """

    id: str
    question: str
    context: str
    answers: list[str]
    answer_starts: list[int]
    gold_paragraph_span: tuple[int, int]
    k: int | str
    n_paragraphs: int
    title: str = ""

    @property
    def spans(self) -> list[tuple[int, int]]:
        """Aligned gold answer spans as (char_start, char_end)."""
        return [(s, s + len(a)) for a, s in zip(self.answers, self.answer_starts) if s >= 0]


@dataclass
class Report:
    """Counts of everything ``build_examples`` did not pass through unchanged."""

    k: int | str = 0
    n_questions: int = 0          # questions seen in the input
    n_examples: int = 0           # examples returned
    n_answers: int = 0            # answers of the returned examples
    n_misaligned_source: int = 0  # answers whose answer_start is already wrong in the source
    n_misaligned_shifted: int = 0  # answers aligned in the source but wrong after shifting (a bug if > 0)
    n_no_gold_span: int = 0       # returned examples left with no aligned answer
    n_empty_questions: int = 0    # dropped
    n_empty_contexts: int = 0     # paragraphs dropped (their questions counted in n_dropped_questions)
    n_no_answers: int = 0         # questions without any answer, dropped
    n_dropped_questions: int = 0  # all questions dropped, any reason
    misaligned_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["misaligned_ids"] = list(self.misaligned_ids)
        return d


# ---------------------------------------------------------------- fetching

def _bigbench_dir() -> Path:
    return cache_dir("qa", "bigbench")


def _have_all(folder: Path) -> bool:
    return all((folder / f).is_file() for f in BUILTIN_FILES.values())


def _run_pip(pip: list[str], dest: Path, timeout: float) -> subprocess.CompletedProcess:
    cmd = [*pip, "download", "--no-deps", "--no-binary", ":all:", BIGBENCH_REQ, "-d", str(dest)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _pip_rejects_direct_urls() -> bool:
    return importlib.util.find_spec("pip._internal.metadata.direct_references") is not None


def _fallback_pip(workdir: Path, timeout: float) -> list[str]:
    """Download an older pip wheel and run it in place (python can run a wheel's pip; nothing is installed)."""
    wheels = workdir / "pip"
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        FALLBACK_PIP, "-d", str(wheels)], capture_output=True, text=True, timeout=timeout)
    found = sorted(wheels.glob("pip-*.whl")) if r.returncode == 0 else []
    if not found:
        raise RuntimeError(f"could not download {FALLBACK_PIP} to fetch {BIGBENCH_REQ} (offline?):\n"
                           f"{(r.stderr or r.stdout)[-1500:]}")
    return [sys.executable, str(found[0] / "pip")]


def _download_sdist(workdir: Path, timeout: float) -> Path:
    pip = [sys.executable, "-m", "pip"]
    if _pip_rejects_direct_urls():
        pip = _fallback_pip(workdir, timeout)
    r = _run_pip(pip, workdir, timeout)
    if r.returncode != 0 and _PIP_REJECTS in (r.stderr + r.stdout) and pip[1] == "-m":
        r = _run_pip(_fallback_pip(workdir, timeout), workdir, timeout)
    sdists = sorted(workdir.glob("bigbench-*.tar.gz"))
    if r.returncode != 0 or not sdists:
        raise RuntimeError(
            f"`pip download --no-deps --no-binary :all: {BIGBENCH_REQ}` failed (exit {r.returncode}). It needs PyPI "
            f"(358 MB); this machine may be offline. Alternatively put {', '.join(BUILTIN_FILES.values())} from the "
            f"sdist's bigbench/{MEMBER_DIR} into {_bigbench_dir()}.\npip said:\n{(r.stderr or r.stdout)[-1500:]}")
    return sdists[0]


def fetch_bigbench_members(timeout: float = 3600) -> Path:
    """The folder holding the five SQuAD JSON files, downloading the bigbench sdist once if needed.

    Only the needed members are extracted (write-then-rename each); the sdist
    is deleted afterwards and bigbench is never installed.
    """
    folder = _bigbench_dir()
    if _have_all(folder):
        return folder
    wanted = set(BUILTIN_FILES.values())
    with tempfile.TemporaryDirectory(dir=cache_dir("qa"), prefix=".bigbench-dl-") as tmp:
        sdist = _download_sdist(Path(tmp), timeout)
        got: set[str] = set()
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and member.name.endswith(MEMBER_DIR + base):
                    fh = tar.extractfile(member)
                    assert fh is not None
                    atomic_write_bytes(folder / base, fh.read())  # only the basename: no path from the archive
                    got.add(base)
        sdist.unlink()
    if got != wanted:
        raise RuntimeError(f"{BIGBENCH_REQ} sdist lacks {sorted(wanted - got)} under {MEMBER_DIR}")
    return folder


def squad_file(name: str) -> Path:
    """Path of a built-in SQuAD JSON file (fetched on first use)."""
    if name not in BUILTIN_FILES:
        raise did_you_mean(name, list(BUILTIN_FILES), "built-in QA dataset")
    return fetch_bigbench_members() / BUILTIN_FILES[name]


def source_fingerprint(name: str) -> str:
    """Content hash of a built-in source, for run ids and provenance."""
    return file_hash(squad_file(name))


# ---------------------------------------------------------------- loading

def _qa(raw: dict[str, Any]) -> QA:
    answers = raw.get("answers") or []
    return QA(id=str(raw["id"]), question=raw.get("question") or "",
              answers=[a["text"] for a in answers], answer_starts=[int(a["answer_start"]) for a in answers])


def articles_from_squad_json(rows: Iterable[dict[str, Any]]) -> list[Article]:
    """Nested SQuAD ``data`` rows (title, paragraphs[context, qas]) to records."""
    return [Article(title=r.get("title") or "",
                    paragraphs=[Paragraph(context=p.get("context") or "", qas=[_qa(q) for q in p.get("qas") or []])
                                for p in r.get("paragraphs") or []])
            for r in rows]


def articles_from_flat(rows: Iterable[dict[str, Any]]) -> list[Article]:
    """Flat hub rows (id, title, context, question, answers{text, answer_start}) regrouped into articles.

    Paragraphs are grouped by (title, context) and kept in first-seen order,
    which is the source order for SQuAD-layout datasets.
    """
    articles: dict[str, Article] = {}
    paras: dict[tuple[str, str], Paragraph] = {}
    for r in rows:
        title, ctx = r.get("title") or "", r.get("context") or ""
        art = articles.setdefault(title, Article(title, []))
        para = paras.get((title, ctx))
        if para is None:
            para = paras[(title, ctx)] = Paragraph(ctx, [])
            art.paragraphs.append(para)
        ans = r.get("answers") or {"text": [], "answer_start": []}
        para.qas.append(QA(id=str(r["id"]), question=r.get("question") or "", answers=list(ans["text"]),
                           answer_starts=[int(s) for s in ans["answer_start"]]))
    return list(articles.values())


def _is_offline() -> bool:
    return offline() or os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0")


def load_hub_squad(name: str, split: str = "validation") -> list[Article]:
    """A hub dataset in the flat SQuAD layout (connected users)."""
    if _is_offline():
        raise ConfigError(f"QA dataset {name!r} looks like a hub id, but this machine is offline "
                          f"(HF_*_OFFLINE set); use a built-in one ({', '.join(BUILTIN_FILES)})")
    try:
        ds = datasets.load_dataset(name, split=split, cache_dir=str(cache_dir("datasets")))
    except ConnectionError as e:
        raise ConfigError(f"could not reach the hub for QA dataset {name!r}; this machine seems offline "
                          f"(built-ins: {', '.join(BUILTIN_FILES)})") from e
    need = {"id", "title", "context", "question", "answers"}
    if not need <= set(ds.column_names):
        raise ConfigError(f"hub dataset {name!r} is not in SQuAD layout: needs {sorted(need)}, has {ds.column_names}")
    return articles_from_flat(ds.select_columns(sorted(need)))


def load_squad(name: str, split: str = "validation") -> list[Article]:
    """Articles of a built-in source (read offline via ``datasets``' json builder) or a hub id.

    ``split`` applies to hub ids only; each built-in file is one split.
    """
    if name in BUILTIN_FILES:
        ds = datasets.load_dataset("json", data_files=str(squad_file(name)), field="data", split="train",
                                   cache_dir=str(cache_dir("datasets")))
        return articles_from_squad_json(ds)
    if _is_offline():
        err = did_you_mean(name, list(BUILTIN_FILES), "QA dataset")
        raise ConfigError(f"{err} (hub ids need a connection; this machine is offline)")
    return load_hub_squad(name, split)


# ---------------------------------------------------------------- contexts

def window(gold: int, n: int, k: int | str) -> tuple[int, int]:
    """Paragraph range [lo, hi) of ``k`` neighbours around ``gold`` in an article of ``n``.

    Neighbours split evenly before/after (an odd one goes after); at an
    article edge the window shifts so it still holds ``min(k, n - 1)`` neighbours.
    """
    if k == "all":
        return 0, n
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ConfigError(f"k must be a non-negative int or 'all', got {k!r}")
    size = min(k + 1, n)
    lo = max(0, min(gold - k // 2, n - size))
    return lo, lo + size


def build_examples(articles: Sequence[Article], k: int | str, *, strict: bool = False) -> tuple[list[Example], Report]:
    """One example per question: gold paragraph + ``k`` neighbours joined with a blank line.

    Answer offsets are shifted by the gold paragraph's offset in the joined
    context and every one is checked (``context[s:s+len(text)] == text``).
    Policy, all counted in the ``Report``, never silent:

    * an answer misaligned in the source (or, impossibly, after shifting) keeps
      its text for EM/F1 but gets start ``-1``, its question id goes in
      ``misaligned_ids``; a question left with no aligned answer is kept
      (``n_no_gold_span``);
    * an empty question, an empty paragraph context or a question without
      answers raises ``ValueError`` naming it if ``strict``, else is dropped
      and counted (an empty paragraph is also not used as a neighbour).
    """
    rep = Report(k=k)
    out: list[Example] = []
    seen: set[str] = set()

    def bad(what: str, where: str) -> None:
        if strict:
            raise ValueError(f"{what}: {where}")

    for art in articles:
        paras: list[Paragraph] = []
        for pi, p in enumerate(art.paragraphs):
            if p.context.strip():
                paras.append(p)
                continue
            rep.n_questions += len(p.qas)
            bad("empty context", f"article {art.title!r} paragraph {pi} (questions {[q.id for q in p.qas][:5]})")
            rep.n_empty_contexts += 1
            rep.n_dropped_questions += len(p.qas)
        joined: dict[tuple[int, int], tuple[str, list[int]]] = {}  # one string per window: k="all" shares it
        for gi, p in enumerate(paras):
            lo, hi = window(gi, len(paras), k)
            if (lo, hi) not in joined:
                offsets, pos = [], 0
                for q in paras[lo:hi]:
                    offsets.append(pos)
                    pos += len(q.context) + len(SEP)
                joined[(lo, hi)] = (SEP.join(q.context for q in paras[lo:hi]), offsets)
            context, offsets = joined[(lo, hi)]
            off = offsets[gi - lo]
            for qa in p.qas:
                rep.n_questions += 1
                if qa.id in seen:
                    raise ValueError(f"duplicate question id {qa.id!r} (article {art.title!r}); ids key predictions")
                seen.add(qa.id)
                if not qa.question.strip():
                    bad("empty question", f"id {qa.id!r}")
                    rep.n_empty_questions += 1
                    rep.n_dropped_questions += 1
                    continue
                if not qa.answers:
                    bad("question without answers", f"id {qa.id!r}")
                    rep.n_no_answers += 1
                    rep.n_dropped_questions += 1
                    continue
                starts, misaligned = [], False
                for text, s in zip(qa.answers, qa.answer_starts):
                    if not (0 <= s and p.context[s:s + len(text)] == text):
                        rep.n_misaligned_source += 1
                        misaligned = True
                        starts.append(-1)
                    elif context[off + s:off + s + len(text)] != text:
                        rep.n_misaligned_shifted += 1
                        misaligned = True
                        starts.append(-1)
                    else:
                        starts.append(off + s)
                extra = len(qa.answers) - len(starts)  # ragged source lists: unpaired answers have no start
                if extra:
                    rep.n_misaligned_source += extra
                    misaligned = True
                    starts += [-1] * extra
                if misaligned:
                    rep.misaligned_ids.append(qa.id)
                if all(s < 0 for s in starts):
                    rep.n_no_gold_span += 1
                rep.n_answers += len(qa.answers)
                out.append(Example(id=qa.id, question=qa.question, context=context, answers=list(qa.answers),
                                   answer_starts=starts, gold_paragraph_span=(off, off + len(p.context)), k=k,
                                   n_paragraphs=hi - lo, title=art.title))
    rep.n_examples = len(out)
    return out, rep


def sample(examples: Sequence[Example], n: int | None, seed: int) -> list[Example]:
    """A fixed subset: the same ``seed`` and ``n`` pick the same questions every run (source order kept)."""
    if n is None or n >= len(examples):
        return list(examples)
    if n < 0:
        raise ValueError(f"sample size must be >= 0, got {n}")
    idx = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in idx]


__all__ = ["Article", "BUILTIN_FILES", "Example", "Paragraph", "QA", "Report", "articles_from_flat",
           "articles_from_squad_json", "build_examples", "fetch_bigbench_members", "load_hub_squad", "load_squad",
           "sample", "source_fingerprint", "squad_file", "window"]
