"""Reusable Keras 3 layers (each usable on its own, each `get_config` round-trips)."""

from kerasformers.layers.attention import MultiHeadAttention
from kerasformers.layers.core import AttentionMask, MaskedAdd, TokenGather, TokenSelect
from kerasformers.layers.embeddings import (
    Embedding,
    PositionEmbedding,
    RelativePositionEmbedding,
    RelativePositionEmbeddingT5,
    SinusoidalPositionEmbedding,
)
from kerasformers.layers.feedforward import FeedForward
from kerasformers.layers.gau import GatedAttentionUnit
from kerasformers.layers.normalization import LayerNormalization, ScaleOffset
from kerasformers.layers.pooling import GlobalPooling

__all__ = [
    "AttentionMask",
    "Embedding",
    "FeedForward",
    "GatedAttentionUnit",
    "GlobalPooling",
    "LayerNormalization",
    "MaskedAdd",
    "MultiHeadAttention",
    "PositionEmbedding",
    "RelativePositionEmbedding",
    "RelativePositionEmbeddingT5",
    "ScaleOffset",
    "SinusoidalPositionEmbedding",
    "TokenGather",
    "TokenSelect",
]

from kerasformers.layers.crf import (  # noqa: E402
    ConditionalRandomField,
    MaximumEntropyMarkovModel,
    ViterbiDecoder,
    viterbi_decode,
)
from kerasformers.layers.global_pointer import EfficientGlobalPointer, GlobalPointer  # noqa: E402
from kerasformers.layers.loss import Loss  # noqa: E402

__all__ += [
    "ConditionalRandomField",
    "EfficientGlobalPointer",
    "GlobalPointer",
    "Loss",
    "MaximumEntropyMarkovModel",
    "ViterbiDecoder",
    "viterbi_decode",
]
