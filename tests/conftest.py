import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402

# Fixture generators run under the original bert4keras (their own venv), not in the suite;
# --doctest-modules would import them.
collect_ignore_glob = ["fixtures/*"]


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    """Each test starts in float32 with fresh layer names (parallel-safe, deterministic)."""
    keras.config.set_dtype_policy("float32")
    # free_memory=False: skip the full gc.collect() (~0.4 s per test on a large
    # JAX/torch heap); the models are tiny and Python collects them anyway.
    keras.utils.clear_session(free_memory=False)
    yield
    keras.config.set_dtype_policy("float32")
