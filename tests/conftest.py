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


# The slowest files start first (measured with --durations), so a leg does not end with one
# long test on one xdist worker while the other sits idle. Order only: every test still runs.
SLOW_FIRST = (
    "tests/models/test_seq2seq_training.py",
    "tests/pretraining/test_resume.py",
    "tests/test_examples.py",
    "tests/test_port_kit.py",
    "tests/pretraining/test_distribution.py",
    "tests/test_decoding_distribution.py",
    "tests/serving/",
    "tests/cli/",
    "tests/reliability/test_generation_faults.py",
    "tests/layers/test_linear_attention.py",
    "tests/test_pretrain_example.py",
    "tests/test_generation.py",
    "tests/test_beam_rules.py",
    "tests/models/test_eager_step.py",
    "tests/checkpoints/test_streamed_loading.py",
    "tests/pretraining/test_trainer.py",
    "tests/pretraining/test_pipeline.py",
    "tests/models/test_conditional_layer_norm.py",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return next((i for i, p in enumerate(SLOW_FIRST) if path.startswith(p)), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: within a rank, collection order
