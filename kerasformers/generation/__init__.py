"""Text generation: `generate` (greedy, sampling, beam search), `stream_generate`,
and bert4keras' `AutoRegressiveDecoder`.

See `generate.generate` for the arguments (transformers' names) and
`runner.Runner` for how a model is driven (KV cache, compiled steps).
"""

from kerasformers.generation import processors
from kerasformers.generation.autoregressive import AutoRegressiveDecoder
from kerasformers.generation.generate import generate, stream_generate
from kerasformers.generation.runner import Runner

__all__ = ["generate", "stream_generate", "AutoRegressiveDecoder", "Runner", "processors"]
