"""Counted input checks every task adapter can share.

Policy: odd documents are kept and counted (the counts go into every run
record's ``info``), except where the task's config says ``error``. What is
counted per split:

- ``empty_docs``: blank text, or text that tokenizes to no token at all (e.g.
  only control characters, which BERT-style normalizers drop);
- ``control_char_docs``: text with C0/C1 control characters other than tab and
  line breaks (kept; the tokenizer's normalizer decides what they become);
- ``replacement_char_docs``: text holding U+FFFD, which is what undecodable
  bytes in a local file become (files are read with ``errors="replace"``);
- ``single_token_docs``: one token;
- ``duplicate_docs``: a text already seen earlier in the same split;
- ``duplicate_ids``: an ``id`` already seen in the same split (when the data has ids);
- ``leaked_docs`` (val/test): texts that also occur in the training split.
"""
from __future__ import annotations

import re
from collections.abc import Sequence

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _duplicates(values: Sequence) -> int:
    seen: set = set()
    n = 0
    for v in values:
        if v in seen:
            n += 1
        seen.add(v)
    return n


def document_counts(split: str, texts: Sequence[str], ids: Sequence[Sequence[int]],
                    doc_ids: Sequence | None = None, train_texts: set[str] | None = None) -> dict[str, int]:
    out = {
        f"empty_docs_{split}": sum(1 for t, x in zip(texts, ids) if not t.strip() or not len(x)),
        f"control_char_docs_{split}": sum(1 for t in texts if CONTROL.search(t)),
        f"replacement_char_docs_{split}": sum(1 for t in texts if "\ufffd" in t),
        f"single_token_docs_{split}": sum(1 for x in ids if len(x) == 1),
        f"duplicate_docs_{split}": _duplicates(texts),
    }
    if doc_ids is not None:
        out[f"duplicate_ids_{split}"] = _duplicates(doc_ids)
    if train_texts is not None:
        out[f"leaked_docs_{split}"] = sum(1 for t in texts if t in train_texts)
    return out


def problems(counts: dict[str, int]) -> list[str]:
    """One line per nonzero count that points at a data problem (for a warning)."""
    worrying = ("replacement_char_docs", "duplicate_docs", "duplicate_ids", "leaked_docs", "control_char_docs")
    return [f"{k}={v}" for k, v in sorted(counts.items()) if v and k.rsplit("_", 1)[0] in worrying]
