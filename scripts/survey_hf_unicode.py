"""List the characters that `Tokenizer(unicode_rules='hf')` treats differently from HF.

HF ``tokenizers`` (what transformers' ``BertTokenizer`` runs) classifies characters with
Unicode tables older than Python's `unicodedata`; this probes every code point through
HF's ``BertNormalizer`` + ``BertPreTokenizer`` and through our tables, and prints the
characters whose word splitting differs, grouped by Unicode category.

    python scripts/survey_hf_unicode.py [--lower]

Takes a few minutes (1.1 million code points).
"""

import argparse
import collections
import sys
import unicodedata


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lower", action="store_true", help="do_lower_case=True")
    lower = parser.parse_args().lower

    from tokenizers import normalizers, pre_tokenizers

    from kerasformers.tokenizers._unicode import DROP, tables

    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lower
    )
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    table = tables("hf")
    diffs = collections.defaultdict(list)
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue
        ch = chr(code)
        theirs = [
            w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str("a" + ch + "a"))
        ]
        mine = ch.lower() if lower else ch
        if lower:
            mine = "".join(
                c for c in unicodedata.normalize("NFD", mine) if unicodedata.category(c) != "Mn"
            )
        mine = "".join(c for c in mine if table.flags[ord(c)] != DROP)
        mine = [m.group() for m in table.unit_re.finditer("a" + mine + "a")]
        if mine != theirs:
            diffs[unicodedata.category(ch)].append(code)
    total = sum(map(len, diffs.values()))
    print(
        "do_lower_case=%s: %d code points differ (Python Unicode %s)"
        % (lower, total, unicodedata.unidata_version)
    )
    for category, codes in sorted(diffs.items()):
        print("  %s %5d  %s" % (category, len(codes), " ".join("U+%04X" % c for c in codes[:12])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
