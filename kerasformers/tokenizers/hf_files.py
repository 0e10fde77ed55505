"""The files of an HF model directory, read into tokenizer arguments (local files only).

`wordpiece_kwargs`, `sentencepiece_kwargs` and `bpe_kwargs` build the keyword arguments of
`Tokenizer`, `SpTokenizer` and `BPETokenizer` from ``vocab.txt`` / ``tokenizer.json`` /
``*.model`` / ``vocab.json`` + ``merges.txt``.  ``tokenizer_config.json`` and
``special_tokens_map.json`` (lower-casing, special tokens, T5 ``extra_ids``) are honoured, and
HF's WordPiece word limit (``max_input_chars_per_word``, 100) is used, so the result
tokenizes as transformers does.  This module imports no tokenizer class: the classes import
it for their ``from_pretrained``.
"""

import glob
import json
import os

from kerasformers.tokenizers.vocab import load_vocab

_SP_NAMES = ("spiece.model", "sentencepiece.bpe.model", "sentencepiece.model", "tokenizer.model")


def read_json(path):
    """The JSON object in the file `path` (UTF-8)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _token(value):
    """A special token from a config: a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _config(path):
    cfg = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        p = os.path.join(path, name)
        if os.path.isfile(p):
            cfg.update(read_json(p))
    return cfg


def tokenizer_json(path):
    """The ``tokenizer.json`` of directory `path`, read, or None if it has none."""
    p = os.path.join(path, "tokenizer.json")
    return read_json(p) if os.path.isfile(p) else None


def _template_specials(post):
    """(start, end) special tokens that a tokenizer.json post-processor puts around a text."""
    if not post:
        return None
    kind = post.get("type")
    if kind == "BertProcessing":
        return post["cls"][0], post["sep"][0]
    if kind == "RobertaProcessing":
        return post["cls"][0], post["sep"][0]
    if kind == "TemplateProcessing":
        single = post.get("single", [])
        start = end = None
        if single and "SpecialToken" in single[0]:
            start = single[0]["SpecialToken"]["id"]
        if len(single) > 1 and "SpecialToken" in single[-1]:
            end = single[-1]["SpecialToken"]["id"]
        return start, end
    if kind == "Sequence":
        for p in post.get("processors", []):
            found = _template_specials(p)
            if found:
                return found
    return None


def _normalizer_lowercase(normalizer):
    if not normalizer:
        return None
    kind = normalizer.get("type")
    if kind == "BertNormalizer":
        return bool(normalizer.get("lowercase"))
    if kind == "Lowercase":
        return True
    if kind == "Sequence":
        for n in normalizer.get("normalizers", []):
            if _normalizer_lowercase(n):
                return True
        return False
    return None


def sp_model_file(path):
    """The SentencePiece model of `path` (a ``.model`` file or a directory holding one), or
    None."""
    if os.path.isfile(path) and path.endswith(".model"):
        return path
    for name in _SP_NAMES:
        p = os.path.join(path, name)
        if os.path.isfile(p):
            return p
    found = sorted(glob.glob(os.path.join(path, "*.model")))
    return found[0] if found else None


def wordpiece_kwargs(path):
    """`Tokenizer` arguments from an HF directory, ``vocab.txt`` or ``tokenizer.json``."""
    if os.path.isfile(path):
        directory = os.path.dirname(path)
        vocab_file = path if not path.endswith(".json") else None
        tj = read_json(path) if path.endswith(".json") else None
    else:
        directory = path
        vocab_file = os.path.join(path, "vocab.txt")
        vocab_file = vocab_file if os.path.isfile(vocab_file) else None
        tj = tokenizer_json(path)
    cfg = _config(directory)
    kwargs = {"word_maxlen": 100}
    lower = cfg.get("do_lower_case")
    if tj is not None and tj.get("model", {}).get("type") == "WordPiece":
        model = tj["model"]
        kwargs["word_maxlen"] = model.get("max_input_chars_per_word", 100)
        if vocab_file is None:
            kwargs["token_dict"] = dict(model["vocab"])
        if lower is None:
            lower = _normalizer_lowercase(tj.get("normalizer"))
        specials = _template_specials(tj.get("post_processor"))
        if specials:
            kwargs["token_start"], kwargs["token_end"] = specials
        if model.get("unk_token"):
            kwargs["token_unk"] = model["unk_token"]
    if vocab_file is not None:
        kwargs["token_dict"] = load_vocab(vocab_file)
    if "token_dict" not in kwargs:
        raise FileNotFoundError("no vocab.txt or WordPiece tokenizer.json in %s" % path)
    kwargs["do_lower_case"] = True if lower is None else bool(lower)  # HF's default
    for ours, theirs in (
        ("token_start", "cls_token"),
        ("token_end", "sep_token"),
        ("token_pad", "pad_token"),
        ("token_unk", "unk_token"),
        ("token_mask", "mask_token"),
    ):
        if _token(cfg.get(theirs)) is not None:
            kwargs[ours] = _token(cfg[theirs])
    return kwargs


def sentencepiece_kwargs(path):
    """`SpTokenizer` arguments from an HF directory or a ``.model`` file."""
    model_file = sp_model_file(path)
    if model_file is None:
        raise FileNotFoundError("no SentencePiece .model file in %s" % path)
    directory = os.path.dirname(model_file)
    cfg = _config(directory)
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model_file)

    def has(piece):
        if piece is None:
            return False
        # SentencePiece answers the unknown id for a piece it does not have
        token_id = sp.piece_to_id(piece)
        return token_id != sp.unk_id() or piece == sp.id_to_piece(token_id)

    kwargs = {"sp_model_path": model_file}
    cls_token, sep_token = _token(cfg.get("cls_token")), _token(cfg.get("sep_token"))
    eos_token = _token(cfg.get("eos_token"))
    if has(cls_token) and has(sep_token):  # ALBERT, XLNet-style models
        kwargs["token_start"], kwargs["token_end"] = cls_token, sep_token
    elif cls_token is None and has("[CLS]") and has("[SEP]"):
        kwargs["token_start"], kwargs["token_end"] = "[CLS]", "[SEP]"
    else:  # T5 / mT5: no start token, '</s>' at the end
        end = eos_token if has(eos_token) else ("</s>" if has("</s>") else None)
        kwargs["token_start"], kwargs["token_end"] = None, end
    if has(_token(cfg.get("mask_token"))):
        kwargs["token_mask"] = _token(cfg["mask_token"])
    extra_ids = cfg.get("extra_ids")
    if extra_ids is None and "t5" in str(cfg.get("tokenizer_class", "")).lower():
        extra_ids = 100
    if extra_ids:
        kwargs["extra_ids"] = int(extra_ids)
    return kwargs


def bpe_kwargs(path):
    """`BPETokenizer` arguments from an HF directory or a ``tokenizer.json``."""
    if os.path.isfile(path):
        return {"vocab": path}
    cfg = _config(path)
    kwargs = {}
    tj = os.path.join(path, "tokenizer.json")
    pairs = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))
    if os.path.isfile(tj):
        kwargs["vocab"] = tj
        specials = _template_specials(read_json(tj).get("post_processor"))
        if specials:
            kwargs["token_start"], kwargs["token_end"] = specials
    else:
        for vocab, merges in pairs:
            if os.path.isfile(os.path.join(path, vocab)) and os.path.isfile(
                os.path.join(path, merges)
            ):
                kwargs["vocab"] = os.path.join(path, vocab)
                kwargs["merges"] = os.path.join(path, merges)
                break
        else:
            raise FileNotFoundError(
                "no tokenizer.json, vocab.json + merges.txt or "
                "encoder.json + vocab.bpe in %s" % path
            )
    if cfg.get("add_prefix_space"):
        kwargs["add_prefix_space"] = True
    for ours, theirs in (
        ("token_pad", "pad_token"),
        ("token_unk", "unk_token"),
        ("token_mask", "mask_token"),
    ):
        if _token(cfg.get(theirs)) is not None:
            kwargs[ours] = _token(cfg[theirs])
    return kwargs
