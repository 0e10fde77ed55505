"""bert4keras' `backend` module under its old name: `from bert4keras.backend import X`
ports as `from kerasformers.backend import X`. The maths lives in `kerasformers.ops`
(backend-neutral, `keras.ops` only); backend-specific code in `kerasformers.backends`.

>>> from kerasformers import backend, ops
>>> backend.sinusoidal_embeddings is ops.sinusoidal_embeddings
True
"""

from kerasformers.ops import *  # noqa: F401,F403
from kerasformers.ops import __all__  # noqa: F401
