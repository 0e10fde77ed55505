"""Text helpers: `text_segmentate` (cut long text at separators), `strQ2B` (full-width to
half-width) and the longest common substring / subsequence.  Plain Python."""


def text_segmentate(text, maxlen, seps="\n", strips=None):
    """Split `text` into pieces of at most `maxlen` characters where possible, cutting at
    the first separator in `seps`, then the next, ... (recursively).  Separators stay at the
    ends of pieces; pieces are stripped of whitespace and of `strips`.

    >>> text_segmentate('今天天气很好。我们去公园吧！好的', 8, seps='。！')
    ['今天天气很好。', '我们去公园吧！', '好的']
    """
    text = text.strip().strip(strips)
    if seps and len(text) > maxlen:
        pieces = text.split(seps[0])
        text, texts = "", []
        for i, p in enumerate(pieces):
            if text and p and len(text) + len(p) > maxlen - 1:
                texts.extend(text_segmentate(text, maxlen, seps[1:], strips))
                text = ""
            if i + 1 == len(pieces):
                text = text + p
            else:
                text = text + p + seps[0]
        if text:
            texts.extend(text_segmentate(text, maxlen, seps[1:], strips))
        return texts
    return [text]


def strQ2B(ustring):
    """Full-width characters to half-width (U+3000 -> space, U+FF01..U+FF5E -> ASCII).

    >>> strQ2B('ＡＢＣ，１２３　！')
    'ABC,123 !'
    """
    return ustring.translate(_Q2B)


_Q2B = {0x3000: 0x20, **{c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}}


def longest_common_substring(source, target):
    """Longest common contiguous slice: ``(length, (i0, i1, j0, j1))`` with
    ``source[i0:i1] == target[j0:j1]`` (the first such span found, as bert4keras).

    >>> longest_common_substring('abcde', 'xbcdy')
    (3, (1, 4, 1, 4))
    """
    best, span = 0, (0, 0, 0, 0)
    prev = [0] * (len(target) + 1)
    for i, si in enumerate(source, 1):
        cur = [0] * (len(target) + 1)
        for j, tj in enumerate(target, 1):
            if si == tj:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best = cur[j]
                    span = (i - best, i, j - best, j)
        prev = cur
    return best, span


def longest_common_subsequence(source, target):
    """Longest common subsequence: ``(length, [(i, j), ...])`` aligned index pairs (the
    same alignment bert4keras returns).

    >>> longest_common_subsequence('abcbdab', 'bdcaba')
    (4, [(1, 0), (2, 2), (3, 4), (5, 5)])
    """
    n, m = len(source), len(target)
    c = [[0] * (m + 1) for _ in range(n + 1)]
    for i, si in enumerate(source, 1):
        row, up = c[i], c[i - 1]
        for j, tj in enumerate(target, 1):
            if si == tj:
                row[j] = up[j - 1] + 1
            elif row[j - 1] > up[j]:
                row[j] = row[j - 1]
            else:
                row[j] = up[j]
    length, mapping = c[n][m], []
    i, j = n - 1, m - 1
    while len(mapping) < length:
        if source[i] == target[j]:
            mapping.append((i, j))
            i, j = i - 1, j - 1
        elif c[i + 1][j] > c[i][j + 1]:
            j -= 1
        else:
            i -= 1
    return length, mapping[::-1]
