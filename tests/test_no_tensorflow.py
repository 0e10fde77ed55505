"""The core works with TensorFlow absent: build, save and load a Google checkpoint on JAX/torch."""

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import importlib.abc, sys
    class Hide(importlib.abc.MetaPathFinder):
        """Wraps the path finder so tensorflow looks not installed at all."""
        def __init__(self, finder):
            self.finder = finder
        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return None
            return self.finder.find_spec(name, path, target)
        def invalidate_caches(self):
            self.finder.invalidate_caches()
    sys.meta_path[:] = [Hide(f) for f in sys.meta_path]
    import os, tempfile, numpy as np
    from kerasformers import build_transformer_model
    kw = dict(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=32, with_mlm=True)
    t = build_transformer_model(None, return_keras_model=False, **kw)
    prefix = os.path.join(tempfile.mkdtemp(), "bert_model.ckpt")
    t.save_weights_as_checkpoint(prefix)
    m = build_transformer_model(None, prefix, **kw)
    for a, b in zip(t.model.get_weights(), m.get_weights()):
        assert np.array_equal(a, b)
    assert "tensorflow" not in sys.modules
    print("OK", __import__("keras").backend.backend())
''')


@pytest.mark.parametrize("backend", ["jax", "torch", None])
def test_core_without_tensorflow(backend, tmp_path):
    """None: no backend configured and no TensorFlow -> kerasformers picks JAX."""
    env = {"PATH": "/usr/bin:/bin", "KERAS_HOME": str(tmp_path), "HOME": str(tmp_path)}
    if backend:
        env["KERAS_BACKEND"] = backend
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith(f"OK {backend or 'jax'}")
