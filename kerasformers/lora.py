"""LoRA adapters on the attention projections, and their own small weight files.

`enable_lora` freezes a model and gives the q/k/v/o projections (the Dense
sublayers `q_dense`, `k_dense`, `v_dense`, `o_dense` of every
`kerasformers.layers.MultiHeadAttention`) low-rank adapters through Keras'
`Dense.enable_lora`: kernel + (alpha / rank) * A @ B, B starting at zero, so
the model's outputs do not change until it trains. Only A and B are trainable.

`save_lora_weights` writes just the adapters (a few KB to MB) as safetensors,
keyed by variable path (`Transformer-0-MultiHeadSelfAttention/q_dense/lora_kernel_a`),
with each adapted layer's rank and alpha in the metadata. `load_lora_weights`
puts them back into a model of the same architecture, enabling the adapters
first if the model has none; every missing key, unexpected key, shape or
rank/alpha mismatch is reported at once and nothing is assigned unless all fit.

`model.save("x.keras")` stores kernels with the adapters merged in (Keras does
that), so a fine-tuned model can also be shipped as one file.

>>> import numpy as np, os, tempfile
>>> from kerasformers import build_transformer_model
>>> from kerasformers.lora import enable_lora, load_lora_weights, save_lora_weights
>>> kw = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1,
...           num_attention_heads=2, intermediate_size=32)
>>> model = build_transformer_model(None, **kw)
>>> base = model.get_weights()
>>> enable_lora(model, rank=4)
>>> [v.path for v in model.trainable_weights]     # doctest: +NORMALIZE_WHITESPACE
['Transformer-0-MultiHeadSelfAttention/q_dense/lora_kernel_a',
 'Transformer-0-MultiHeadSelfAttention/q_dense/lora_kernel_b',
 'Transformer-0-MultiHeadSelfAttention/v_dense/lora_kernel_a',
 'Transformer-0-MultiHeadSelfAttention/v_dense/lora_kernel_b']
>>> path = os.path.join(tempfile.mkdtemp(), "adapters.safetensors")
>>> save_lora_weights(model, path)
>>> fresh = build_transformer_model(None, **kw)
>>> fresh.set_weights(base)                        # the same base model
>>> load_lora_weights(fresh, path)
>>> len(fresh.trainable_weights)
4
"""

import json

import keras
import numpy as np

from kerasformers.checkpoints.errors import CheckpointError
from kerasformers.layers import MultiHeadAttention

#: the Dense sublayers of MultiHeadAttention that can take adapters
ATTENTION_PROJECTIONS = ("q_dense", "k_dense", "v_dense", "o_dense")
_FORMAT = "kerasformers-lora"


def _sublayers(model):
    """Every layer inside `model` once (shared layers, e.g. ALBERT's, count once)."""
    seen, layers = set(), []
    for layer in model._flatten_layers(include_self=False):  # what Model.quantize walks
        if id(layer) not in seen:
            seen.add(id(layer))
            layers.append(layer)
    return layers


def _adapted_layers(model):
    """{layer path: layer} of the layers with LoRA enabled."""
    return {
        layer.path: layer for layer in _sublayers(model) if getattr(layer, "lora_enabled", False)
    }


def _freeze(model):
    """Every existing variable non-trainable (layers stay trainable, so adapters
    added later are trained)."""
    model.trainable = True
    for variable in model.weights:
        variable.trainable = False


def enable_lora(model, rank, targets=("q_dense", "v_dense"), alpha=None):
    """Freeze `model` and add rank-`rank` LoRA adapters to its attention projections.

    targets: which projections of every MultiHeadAttention layer get adapters,
        any of 'q_dense', 'k_dense', 'v_dense', 'o_dense' (default q and v, as
        in the LoRA paper).
    alpha: the adapter's scale is alpha / rank (default alpha = rank, scale 1,
        Keras' default).
    Afterwards only the adapters are trainable: every other weight of `model`,
    heads included, is frozen. To train a new head as well, set its variables'
    `trainable = True` after this call. Call once per model.

    >>> from kerasformers import build_transformer_model
    >>> model = build_transformer_model(None, model="gpt2", vocab_size=50, hidden_size=16,
    ...                                 num_hidden_layers=2, num_attention_heads=2,
    ...                                 intermediate_size=32)
    >>> enable_lora(model, rank=2, targets=("q_dense", "k_dense", "v_dense", "o_dense"))
    >>> len(model.trainable_weights), len(model.non_trainable_weights) > 0
    (16, True)
    """
    targets = tuple(targets)
    unknown = [t for t in targets if t not in ATTENTION_PROJECTIONS]
    if unknown or not targets:
        raise ValueError(f"LoRA targets must be among {ATTENTION_PROJECTIONS}, got {targets}")
    if not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ValueError(f"LoRA rank must be a positive integer, got {rank!r}")
    attention = [l for l in _sublayers(model) if isinstance(l, MultiHeadAttention)]
    if not attention:
        raise ValueError(
            f"{model.name} has no kerasformers MultiHeadAttention layer "
            "(nothing to adapt; is it built?)"
        )
    if _adapted_layers(model):
        raise ValueError(
            f"{model.name} already has LoRA adapters ({', '.join(_adapted_layers(model))})"
        )
    _freeze(model)
    for layer in attention:
        for target in targets:
            getattr(layer, target).enable_lora(int(rank), lora_alpha=alpha)


def lora_weights(model):
    """{variable path: variable} of every LoRA adapter weight in `model`, in order.

    >>> from kerasformers import build_transformer_model
    >>> model = build_transformer_model(None, vocab_size=50, hidden_size=16,
    ...                                 num_hidden_layers=1, num_attention_heads=2,
    ...                                 intermediate_size=32)
    >>> lora_weights(model)
    {}
    """
    adapted = _adapted_layers(model)
    return {
        v.path: v for layer in adapted.values() for v in layer.weights if v.name.startswith("lora_")
    }


def _metadata(model):
    layers = {
        path: {"rank": int(layer.lora_rank), "alpha": float(layer.lora_alpha)}
        for path, layer in _adapted_layers(model).items()
    }
    return {"format": _FORMAT, "layers": json.dumps(layers, sort_keys=True)}


def save_lora_weights(model, path):
    """Write the LoRA adapters of `model` (only them) to the safetensors file `path`.

    Keys are variable paths; values float32. The metadata records each adapted
    layer's rank and alpha, which `load_lora_weights` checks (or uses).
    """
    from safetensors.numpy import save_file

    weights = lora_weights(model)
    if not weights:
        raise ValueError(f"{model.name} has no LoRA adapters to save (call enable_lora first)")
    tensors = {
        p: np.ascontiguousarray(keras.ops.convert_to_numpy(v), dtype="float32")
        for p, v in weights.items()
    }
    save_file(tensors, str(path), metadata=_metadata(model))


def _read(path):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from e
    if metadata.get("format") != _FORMAT:
        raise CheckpointError(
            f"{path} is not a kerasformers LoRA file (metadata format "
            f"{metadata.get('format')!r}; write it with save_lora_weights)"
        )
    try:
        layers = json.loads(metadata["layers"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable LoRA metadata ({e})") from e
    return tensors, layers


def load_lora_weights(model, path):
    """Load adapters written by `save_lora_weights` into `model` (same architecture).

    A model without adapters gets them first, with the file's rank and alpha
    per layer (and is frozen as `enable_lora` does). Raises CheckpointError
    listing every missing key, unexpected key, shape mismatch and rank/alpha
    mismatch; the model is left untouched unless everything fits.
    """
    tensors, layers = _read(path)
    problems = []
    adapted = _adapted_layers(model)
    if adapted:  # the model's adapters: their variables and settings
        expected = {p: tuple(v.shape) for p, v in lora_weights(model).items()}
        for layer_path in sorted(set(layers) | set(adapted)):
            if layer_path not in adapted:
                problems.append(f"the file adapts {layer_path}, which has no adapter in the model")
            elif layer_path not in layers:
                problems.append(f"{layer_path} has an adapter the file does not describe")
            else:
                ours, theirs = adapted[layer_path], layers[layer_path]
                if int(theirs["rank"]) != ours.lora_rank or not np.isclose(
                    float(theirs["alpha"]), float(ours.lora_alpha)
                ):
                    problems.append(
                        f"{layer_path}: rank/alpha {theirs['rank']}/{theirs['alpha']}"
                        f" in the file, {ours.lora_rank}/{ours.lora_alpha} in the model"
                    )
    else:  # adapters to add: the file's layers must exist, as Dense layers
        dense = {l.path: l for l in _sublayers(model) if isinstance(l, keras.layers.Dense)}
        expected = {}
        for layer_path, spec in sorted(layers.items()):
            if layer_path not in dense:
                problems.append(
                    f"the file adapts {layer_path}, which is not a Dense layer of the model"
                )
                continue
            rank, (fan_in, units) = int(spec["rank"]), dense[layer_path].kernel.shape
            expected[f"{layer_path}/lora_kernel_a"] = (fan_in, rank)
            expected[f"{layer_path}/lora_kernel_b"] = (rank, units)
    for key in sorted(set(expected) - set(tensors)):
        problems.append(f"missing in the file: {key}")
    for key in sorted(set(tensors) - set(expected)):
        problems.append(f"unexpected in the file: {key}")
    for key in sorted(set(tensors) & set(expected)):
        if tuple(tensors[key].shape) != expected[key]:
            problems.append(
                f"shape of {key}: {tuple(tensors[key].shape)} in the file, "
                f"{expected[key]} in the model"
            )
    if problems:
        raise CheckpointError(
            f"cannot load LoRA weights from {path} into {model.name}:\n  " + "\n  ".join(problems)
        )
    if not adapted:
        _freeze(model)
        for layer_path, spec in layers.items():
            dense[layer_path].enable_lora(int(spec["rank"]), lora_alpha=float(spec["alpha"]))
    for key, variable in lora_weights(model).items():
        variable.assign(tensors[key].astype(variable.dtype))


__all__ = [
    "ATTENTION_PROJECTIONS",
    "enable_lora",
    "lora_weights",
    "save_lora_weights",
    "load_lora_weights",
]
