"""Decoding a batch of one under an active `keras.distribution.DataParallel` (JAX, two
host devices from XLA_FLAGS, in a subprocess): `AutoRegressiveDecoder` searches run
outside the distribution and give the tokens they give without one; `generate` too;
the distribution is active again afterwards. Backend-independent (always JAX)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import json
import keras
import numpy as np
from kerasformers import build_transformer_model
from kerasformers.generation import AutoRegressiveDecoder, generate, outside_distribution

keras.utils.set_random_seed(0)
unilm = build_transformer_model(None, model="bert", application="unilm", vocab_size=50,
                                hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=32, return_keras_model=False)


class Decoder(AutoRegressiveDecoder):
    @AutoRegressiveDecoder.wraps(default_rtype="probas")
    def predict(self, inputs, output_ids, states):
        token_ids, segment_ids = inputs
        token_ids = np.concatenate([token_ids, output_ids], 1)
        segment_ids = np.concatenate([segment_ids, np.ones_like(output_ids)], 1)
        return self.last_token(unilm.model).predict([token_ids, segment_ids], verbose=0)


decoder = Decoder(start_id=None, end_id=3, maxlen=5)
source = [np.array([2, 5, 6, 7, 3]), np.zeros(5, "int32")]


def decode():
    return {
        "beam1": decoder.beam_search(source, topk=1).tolist(),
        "beam3": decoder.beam_search(source, topk=3).tolist(),
        "sample": [s.tolist() for s in decoder.random_sample(source, n=1, seed=0)],
        "generate": generate(unilm, [source[0].tolist()], max_new_tokens=5, eos_token_id=3,
                             num_beams=3).tolist(),
    }


out = {"devices": len(keras.distribution.list_devices()), "plain": decode()}
distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
keras.distribution.set_distribution(distribution)
other = build_transformer_model(None, model="bert", application="unilm", vocab_size=50,
                                hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32)
try:  # what bert4keras-style code meets without the fix: Keras splits the one row (and
    # Keras' JAX predict leaves that model's variables purged: another model here)
    other.predict([source[0][None], source[1][None]], verbose=0)
    out["predict_error"] = None
except Exception as e:
    out["predict_error"] = type(e).__name__
out["distributed"] = decode()
out["restored"] = keras.distribution.distribution() is distribution
with outside_distribution():
    out["inside"] = keras.distribution.distribution() is None
print("RESULT " + json.dumps(out))
"""


def test_decoding_a_batch_of_one_under_data_parallel():
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    assert out["devices"] == 2
    assert out["predict_error"] == "IndivisibleError"
    assert out["distributed"] == out["plain"]
    assert out["restored"] and out["inside"]
