"""Tokenizers with the bert4keras API, character offsets and batch encoding.

* `Tokenizer`: BERT WordPiece, pure Python, exact to transformers' ``BertTokenizer``
  (ids and offsets) and several times faster than HF ``tokenizers`` on Chinese text.
* `SpTokenizer`: SentencePiece models (T5, mT5, ALBERT, CPM).
* `BPETokenizer` (alias `GPT2Tokenizer`): GPT-2 byte-level BPE.
* `from_pretrained(path)`: the right one for an HF model directory.

>>> from kerasformers.tokenizers import Tokenizer
>>> Tokenizer({'[UNK]': 0, '[CLS]': 1, '[SEP]': 2, '你': 3, '好': 4}).encode('你好')
([1, 3, 4, 2], [0, 0, 0, 0])
"""

from kerasformers.tokenizers.base import TokenizerBase
from kerasformers.tokenizers.bpe import BPETokenizer, GPT2Tokenizer
from kerasformers.tokenizers.pretrained import from_pretrained
from kerasformers.tokenizers.sentencepiece_tokenizer import SpTokenizer
from kerasformers.tokenizers.vocab import load_vocab, save_vocab
from kerasformers.tokenizers.wordpiece import Tokenizer

__all__ = [
    "load_vocab",
    "save_vocab",
    "TokenizerBase",
    "Tokenizer",
    "SpTokenizer",
    "BPETokenizer",
    "GPT2Tokenizer",
    "from_pretrained",
]
