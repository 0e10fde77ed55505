"""Text generation: `generate` (greedy, sampling, beam search), `stream_generate`,
and bert4keras' `AutoRegressiveDecoder`.

- `config.py`: `GenerationConfig`, every setting and its default (transformers' names);
- `processors.py`: the logits processors, once, in `keras.ops`;
- `loops.py`: each search's loop body, run compiled on the device or step by step
  on the host; `draws.py`: sampling's counter-based random draws;
- `runner.py`: `Runner`, how a model is driven (KV cache, compiled steps; the
  compilers live in `kerasformers.backends.<name>.compile`);
- `generate.py`: `generate` and `stream_generate`.
"""

from kerasformers.generation import processors
from kerasformers.generation.autoregressive import AutoRegressiveDecoder, outside_distribution
from kerasformers.generation.config import GenerationConfig
from kerasformers.generation.generate import check_prompts, generate, stream_generate
from kerasformers.generation.runner import Runner

__all__ = [
    "generate",
    "stream_generate",
    "GenerationConfig",
    "AutoRegressiveDecoder",
    "outside_distribution",
    "Runner",
    "check_prompts",
    "processors",
]
