"""An HTTP server for kerasformers models: OpenAI-compatible embeddings and completions,
fill-mask, tokenize, a page at ``/``, with dynamic batching (FastAPI on uvicorn).

* `serve(path, host="127.0.0.1", port=8000, max_batch_size=32, max_wait_ms=5, ...)`: run it;
* `create_app(models, ...)`: the ASGI app (for tests, or your own ASGI server);
* `ServedModel`: a model directory loaded for serving (what it serves, the batched calls);
* `Batcher`, `Worker`, `Job`: the dynamic batching (`batcher.py`);
* `schemas`: the request bodies and the error shape.

Needs the ``serve`` extra: ``pip install "kerasformers[serve]"`` (fastapi, uvicorn).
"""

from kerasformers.serving.app import create_app
from kerasformers.serving.batcher import Batcher, Job, Worker
from kerasformers.serving.models import Detokenizer, ServedModel
from kerasformers.serving.server import serve

__all__ = ["serve", "create_app", "ServedModel", "Detokenizer", "Batcher", "Job", "Worker"]
