"""`kerasformers export PATH OUT --format onnx|tf_saved_model`: an inference artefact.

Through Keras' own `model.export`, then checked: the artefact is run on random
token ids next to our model and the largest difference is printed (onnxruntime
for ONNX, TensorFlow for the SavedModel). Encoders export their last hidden
states, causal LMs their next-token probabilities.

Backends (Keras 3.15, measured on these models):
  onnx            --backend torch. Fixed input shape [--batch-size, --max-length]
                  (Keras' torch exporter has no dynamic axes for them): pad inputs
                  to that shape. JAX (jax2onnx) and TensorFlow (tf2onnx: no Erfc
                  op for the exact GELU) fail on these models.
  tf_saved_model  --backend tensorflow or jax (jax2tf); any batch and length.
                  Call it as tf.saved_model.load(OUT).serve([token_ids, segment_ids]).
"""

import os

from kerasformers.cli.encode import positive_int
from kerasformers.cli.model_dir import (
    CLIError,
    add_model_arguments,
    build,
    model_inputs,
    open_model_dir,
)

#: format -> backends whose Keras export works for these models
FORMATS = {"onnx": ("torch",), "tf_saved_model": ("tensorflow", "jax")}


def add_parser(subparsers, name):
    import argparse

    parser = subparsers.add_parser(
        name,
        help="export to ONNX (--backend torch) or a TF SavedModel (--backend tensorflow|jax)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("out", metavar="OUT", help="the .onnx file or SavedModel directory")
    parser.add_argument("--format", required=True, choices=tuple(FORMATS), help="see above")
    parser.add_argument(
        "--batch-size", type=positive_int, default=1, help="onnx: fixed batch size (default 1)"
    )
    parser.add_argument(
        "--max-length",
        type=positive_int,
        default=128,
        help="onnx: fixed sequence length (default 128); also the length checked",
    )
    parser.set_defaults(run=run)
    return parser


def sample_inputs(transformer, batch_size, length, seed=0):
    """Random token ids (and zero segment ids) to compare the artefact with our model."""
    import numpy as np

    rng = np.random.default_rng(seed)
    token_ids = rng.integers(1, transformer.vocab_size, (batch_size, length)).astype("int32")
    return model_inputs(transformer, token_ids, np.zeros_like(token_ids))


def input_signature(transformer, shape):
    import keras

    return [
        [keras.InputSpec(shape=shape, dtype="int32", name=x.name) for x in transformer.model.inputs]
    ]


def export(transformer, out, format, batch_size=1, max_length=128, progress=None):
    """Export `transformer.model` to `out`; returns the max |difference| on sample inputs."""
    import keras
    import numpy as np

    step = progress.update if progress is not None else (lambda n: None)

    backend = keras.backend.backend()
    if backend not in FORMATS[format]:
        raise CLIError(
            f"--format {format} needs --backend {' or '.join(FORMATS[format])} "
            f"(this process runs {backend})"
        )
    model = transformer.model
    inputs = sample_inputs(transformer, batch_size, max_length)
    ours = np.asarray(model.predict_on_batch(inputs), dtype="float32")
    if format == "onnx":
        import onnxruntime

        model.export(
            out,
            format="onnx",
            verbose=False,
            input_signature=input_signature(transformer, (batch_size, max_length)),
        )
        step(1)
        session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
        feeds = {spec.name: x for spec, x in zip(session.get_inputs(), inputs)}
        theirs = session.run(None, feeds)[0]
    else:
        import tensorflow as tf

        kwargs = {}
        if backend == "jax":  # every input has the same (batch, length)
            kwargs["jax2tf_kwargs"] = {"polymorphic_shapes": [["(b, n)"] * len(inputs)]}
        model.export(
            out,
            format="tf_saved_model",
            verbose=False,
            input_signature=input_signature(transformer, (None, None)),
            **kwargs,
        )
        step(1)
        loaded = tf.saved_model.load(out)  # kept: its variables die with it
        theirs = loaded.serve(inputs)
    step(1)
    return float(np.max(np.abs(np.asarray(theirs, dtype="float32") - ours)))


def run(args):
    model_dir = open_model_dir(args.path, args.model)
    if os.path.exists(args.out):
        raise CLIError(f"OUT {args.out!r} already exists")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise CLIError(f"OUT {args.out!r}: directory {folder!r} does not exist")
    import keras

    backend = keras.backend.backend()
    if backend not in FORMATS[args.format]:
        raise CLIError(
            f"--format {args.format} needs --backend {' or '.join(FORMATS[args.format])} "
            f"(this process runs {backend})"
        )
    from tqdm import tqdm

    with tqdm(total=3, desc="export", unit="step", leave=False) as progress:
        transformer = build(model_dir)
        progress.update(1)
        diff = export(
            transformer, args.out, args.format, args.batch_size, args.max_length, progress
        )
    print(f"wrote {args.out} ({args.format}, {backend} backend)")
    print(f"checked against our model: max |difference| = {diff:.3g}")
