"""Pretraining on your own text: shards on disk, objectives on the fly, `fit` on any backend.

bert4keras' `pretraining/` (TFRecords written 10 times for "dynamic" masks, then
`MirroredStrategy`/TPU on TF 1.14) rebuilt on the Keras 3 engines:

* `write_shards` (`shards`): plain text / JSON lines -> sentences -> jieba words ->
  WordPiece ids with word-start flags -> instances packed greedily up to
  `sequence_length` -> ArrayRecord shards + ``manifest.json``; parallel, resumable.
* `build_vocab` / `corpus_vocab` (`vocab`): a vocabulary for a corpus of your own
  symbols (desensitized ids), or a real vocab shrunk to what the corpus uses.
* `MaskedLM` (whole-word), `CausalLM`, `UniLM` (`objectives`): drawn in the loader,
  a new mask every epoch, never N copies on disk.
* `PretrainingData` (`pipeline`): a grain pipeline (seeded per-epoch shuffle,
  prefetch workers, per-process sharding) that `model.fit` consumes on every backend.
* `masked_positions_model`, `label_positions` (`positions`): the MLM head only at
  the labelled positions (Google BERT's ``masked_lm_positions``), same loss.
* `MaskedLMLoss`, `MaskedAccuracy` (`losses`); `compile_pretraining`,
  `fit_pretraining` (`trainer`); `TrainingCheckpoint`, `restore_checkpoint`
  (`checkpoint`): exact resume after a kill.
* `get_layout_map`, `data_parallel`, `model_parallel`, `initialize_multiprocess`
  (`distribution`): `keras.distribution` on JAX, one device to many processes.

Names are imported lazily, so `import kerasformers.pretraining.shards` (and grain's
worker processes) do not start a Keras backend.
"""

import importlib

_EXPORTS = {
    "encode_record": "records",
    "decode_record": "records",
    "read_documents": "corpus",
    "split_sentences": "corpus",
    "strip_pos_tags": "corpus",
    "tokenize_words": "corpus",
    "pack_document": "corpus",
    "write_shards": "shards",
    "read_manifest": "shards",
    "vocab_hash": "shards",
    "build_vocab": "vocab",
    "corpus_vocab": "vocab",
    "MaskedLM": "objectives",
    "CausalLM": "objectives",
    "UniLM": "objectives",
    "PretrainingData": "pipeline",
    "label_positions": "positions",
    "masked_positions_model": "positions",
    "MaskedLMLoss": "losses",
    "MaskedAccuracy": "losses",
    "compile_pretraining": "trainer",
    "fit_pretraining": "trainer",
    "TrainingCheckpoint": "checkpoint",
    "restore_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "latest_checkpoint": "checkpoint",
    "get_layout_map": "distribution",
    "data_parallel": "distribution",
    "model_parallel": "distribution",
    "initialize_multiprocess": "distribution",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kerasformers.pretraining' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
