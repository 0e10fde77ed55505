"""Files: `IndexedTextFile` (random access to the lines of a big text file) and bert4keras's
`open`, which returns one when asked for an ``indexable`` file."""

import builtins
import json
import os


class IndexedTextFile:
    """A text file with random access to its lines: ``f[i]``, ``len(f)``, iteration.

    The byte offset of every line is found once (or loaded from / saved to `index_path`, a
    JSON file), so huge corpora can be shuffled and read by index without loading them.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), 'corpus.txt')
    >>> _ = builtins.open(path, 'w', encoding='utf-8').write('第一行\\nsecond\\n')
    >>> with IndexedTextFile(path) as f:
    ...     len(f), f[1], f[-2]
    (2, 'second\\n', '第一行\\n')
    """

    def __init__(self, name, encoding="utf-8", errors="strict", index_path=None):
        self.name = name
        self.encoding = encoding
        self.errors = errors
        self.file = builtins.open(name, "rb")
        if index_path is not None and os.path.exists(index_path):
            with builtins.open(index_path) as f:
                self.offsets = json.load(f)
        else:
            self.offsets = self._scan()
            if index_path is not None:
                with builtins.open(index_path, "w") as f:
                    json.dump(self.offsets, f)

    def _scan(self):
        offsets, offset = [], 0
        self.file.seek(0)
        for line in self.file:
            offsets.append(offset)
            offset += len(line)
        self.file.seek(0)
        return offsets

    def _decode(self, line):
        return line.decode(self.encoding, self.errors) if self.encoding else line

    def __getitem__(self, key):
        self.file.seek(self.offsets[key])
        return self._decode(self.file.readline())

    def __len__(self):
        return len(self.offsets)

    def __iter__(self):
        self.file.seek(0)
        for line in self.file:
            yield self._decode(line)

    def close(self):
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open(name, mode="r", encoding=None, errors="strict", indexable=False):
    """bert4keras's `open`: the built-in `open`, or with ``indexable`` an `IndexedTextFile`
    (``indexable`` may be the path of a JSON file caching the line index)."""
    if not indexable:
        return builtins.open(name, mode, encoding=encoding, errors=errors)
    if mode not in ("r", "rt", "rb"):
        raise ValueError("an indexable file is read-only")
    index_path = indexable if isinstance(indexable, (str, os.PathLike)) else None
    return IndexedTextFile(
        name, None if mode == "rb" else (encoding or "utf-8"), errors, index_path
    )
