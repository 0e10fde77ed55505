"""Character classes of the BERT basic tokenizer, computed once from the running `unicodedata`.

The original bert4keras classifies every character with `unicodedata.category` on every call.
We classify the whole code space once (about 0.2 s, on first use) and turn the classes into
compiled regular expressions and translation tables, so that tokenizing a line is a handful of
C-level regex and dict operations.  Computing at run time (rather than shipping a table) keeps us
exact for whatever Unicode version the running Python has, as the original is.

Classes (after lower-casing and accent stripping, when those are on):

* SPLIT: punctuation (ASCII 33-47, 58-64, 91-96, 123-126, or any ``P*`` category) and CJK
  ideographs.  Each one is a token on its own.
* SPACE: space, ``\\t``, ``\\n``, ``\\r``, ``Zs`` and U+2028/U+2029.  Separates words.
* DROP: NUL, U+FFFD and the other ``Cc``/``Cf`` controls (and ``Co``/``Cs`` under the
  ``'hf'`` rules, see `Tables`).  Removed; they do not split a word.
* WORD: everything else.  Runs of WORD characters are the words that WordPiece splits.
"""

import re
import threading
import unicodedata

WORD, SPLIT, SPACE, DROP = 0, 1, 2, 3

_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
_HF_CJK_RANGES = tuple((0x2B920, hi) if lo == 0x2B820 else (lo, hi) for lo, hi in _CJK_RANGES)
_ASCII_PUNCT_RANGES = ((33, 47), (58, 64), (91, 96), (123, 126))


def is_cjk_character(ch):
    """Whether `ch` is a CJK ideograph (the ranges of the original BERT and bert4keras)."""
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _CJK_RANGES)


def is_punctuation(ch):
    """ASCII punctuation ranges, or any Unicode ``P*`` category."""
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _ASCII_PUNCT_RANGES) or unicodedata.category(
        ch
    ).startswith("P")


def is_space(ch):
    return ch in " \n\r\t" or unicodedata.category(ch) == "Zs"


def is_control(ch):
    return unicodedata.category(ch) in ("Cc", "Cf")


def char_class(ch):
    """The class of one (already normalised) character, in the original's order of tests."""
    if is_punctuation(ch) or is_cjk_character(ch):
        return SPLIT
    if is_space(ch):
        return SPACE
    if ch == "\x00" or ch == "\ufffd" or is_control(ch):
        return DROP
    return WORD


def strip_accents(text):
    """NFD, then drop non-spacing marks (``Mn``), as the original's `lowercase_and_normalize`."""
    text = unicodedata.normalize("NFD", text)
    return "".join(ch for ch in text if unicodedata.category(ch) != "Mn")


def lowercase_and_normalize(text):
    """Lower-case, NFD, strip ``Mn`` (bert4keras `snippets.lowercase_and_normalize`)."""
    return strip_accents(text.lower())


def _ranges(flags, value):
    """[(lo, hi)] runs of code points whose flag equals `value`."""
    pattern = re.compile(re.escape(bytes([value])) + b"+")
    return [(m.start(), m.end() - 1) for m in pattern.finditer(flags)]


def _char_set(ranges):
    """A regex character-class body for code-point ranges."""
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append("\\U%08x" % lo)
        else:
            parts.append("\\U%08x-\\U%08x" % (lo, hi))
    return "".join(parts)


RULES = ("hf", "bert4keras")


class Tables:
    """Compiled regexes and translation tables for one set of rules (see `tables()`).

    ``rules='bert4keras'`` is the original (and Google BERT's) character handling: only
    ``Cc``/``Cf`` controls are dropped, so private-use or unassigned characters become
    ``[UNK]``, and lower-casing is Python's `str.lower` of the whole text (final sigma).
    ``rules='hf'`` is what HF ``tokenizers`` / transformers' ``BertTokenizer`` do: private-use
    (``Co``) and surrogate characters are dropped as well, and lower-casing is per character.
    Unassigned code points (``Cn``) are kept as word characters by both: a character that
    this Python's Unicode database does not know yet (a new emoji) is one HF may know.
    Known residual differences from HF, all on rare characters: HF's punctuation, control
    and non-spacing-mark tables are from an old Unicode version, so characters whose
    category changed since (or that are newer than this Python's database) can be
    classified differently; scripts/survey_hf_unicode.py lists them.
    """

    def __init__(self, rules="hf"):
        if rules not in RULES:
            raise ValueError("unicode_rules must be one of %s, got %r" % (RULES, rules))
        self.rules = rules
        categories = list(map(unicodedata.category, map(chr, range(0x110000))))
        flags = bytearray(0x110000)  # WORD everywhere to start with
        drop_categories = ("Cc", "Cf") if rules == "bert4keras" else ("Cc", "Cf", "Co", "Cs")
        for i, cat in enumerate(categories):
            if cat[0] == "P":
                flags[i] = SPLIT
            elif cat == "Zs":
                flags[i] = SPACE
            elif cat in drop_categories:
                flags[i] = DROP
        # HF's Rust tokenizer starts the fifth CJK range at 0x2B920 (Google's: 0x2B820)
        cjk = _CJK_RANGES if rules == "bert4keras" else _HF_CJK_RANGES
        for lo, hi in _ASCII_PUNCT_RANGES + cjk:
            flags[lo : hi + 1] = bytes([SPLIT]) * (hi - lo + 1)
        # U+2028/U+2029 (Zl/Zp) split words in both: HF counts them as whitespace, and
        # bert4keras keeps them in its spaced string, which str.split() then splits on.
        spaces = " \n\r\t\u2028\u2029"
        for ch in spaces:
            flags[ord(ch)] = SPACE
        flags[0] = flags[0xFFFD] = DROP
        flags = bytes(flags)
        self.flags = flags

        mn = [(i, i) for i, cat in enumerate(categories) if cat == "Mn"]
        # In 'hf' rules lower-casing is per character: a final sigma produced by
        # str.lower() needs the exact path.
        sigma = [(0x3C2, 0x3C2)] if rules == "hf" else []
        lower_complex = _merge(sorted(_ranges(flags, DROP) + mn + sigma))

        # Two versions of every regex: one for the Basic Multilingual Plane only, which
        # `re` compiles to a constant-time character set, and one for all code points
        # (a linear list of ranges, several times slower).  The BMP "complex" regexes also
        # match any astral character, so a line with one is rechecked with the full version.
        self.token_re = re.compile(
            "([%s]+)|[%s]+" % (_char_set(_ranges(flags, SPLIT)), _char_set(_ranges(flags, WORD)))
        )
        self.token_bmp_re = re.compile(
            "([%s]+)|[%s]+"
            % (_char_set(_bmp(_ranges(flags, SPLIT))), _char_set(_bmp(_ranges(flags, WORD))))
        )
        self.complex_re = re.compile("[%s]" % _char_set(_ranges(flags, DROP)))
        self.complex_bmp_re = re.compile(
            "[%s]|[\\U00010000-\\U0010ffff]" % _char_set(_bmp(_ranges(flags, DROP)))
        )
        self.lower_complex_re = re.compile("[%s]" % _char_set(lower_complex))
        self.lower_complex_bmp_re = re.compile(
            "[%s]|[\\U00010000-\\U0010ffff]" % _char_set(_bmp(lower_complex))
        )
        # One single-character token or one word: what a lone [UNK] can stand for.
        self.unit_re = re.compile(
            "[%s]|[%s]+" % (_char_set(_ranges(flags, SPLIT)), _char_set(_ranges(flags, WORD)))
        )

        # Lower-case mode: characters that become exactly one other character under
        # NFD + strip Mn (e.g. 'é' -> 'e') are translated in place, keeping offsets 1:1.
        # Anything that vanishes (a lone Mn) or expands (Hangul syllables) takes the exact path.
        strip1 = {}
        for i in range(0x110000):
            if 0xD800 <= i <= 0xDFFF:
                continue
            ch = chr(i)
            if unicodedata.is_normalized("NFD", ch):
                continue
            stripped = strip_accents(ch)
            if len(stripped) == 1:
                strip1[i] = stripped
        self.strip1 = strip1


def _bmp(ranges):
    return [(lo, min(hi, 0xFFFF)) for lo, hi in ranges if lo <= 0xFFFF]


def _merge(ranges):
    merged = []
    for lo, hi in ranges:
        if merged and merged[-1][1] + 1 == lo:
            merged[-1] = (merged[-1][0], hi)
        else:
            merged.append((lo, hi))
    return merged


_TABLES = {}
_LOCK = threading.Lock()


def tables(rules="hf"):
    """The process-wide `Tables` for `rules`, built on first use."""
    table = _TABLES.get(rules)
    if table is None:
        with _LOCK:
            table = _TABLES.get(rules)
            if table is None:
                table = _TABLES[rules] = Tables(rules)
    return table
