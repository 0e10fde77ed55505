"""`kerasformers convert SRC DST --to google|hf`: change a checkpoint directory's format.

Google: bert_config.json + bert_model.ckpt.{index,data-00000-of-00001} + vocab.txt
(TensorFlow not needed). HF: config.json + model.safetensors + the tokenizer files.
Heads found in SRC (MLM, pooler, NSP, discriminator) are kept. DST is then
reloaded and every weight compared with SRC's; the largest difference is
printed (0 for float32; the rounding error for --dtype bfloat16/float16).
"""

import json
import os
import shutil

from kerasformers.cli.model_dir import (
    CLIError,
    add_model_arguments,
    build,
    checkpoint_heads,
    open_model_dir,
)

GOOGLE_CONFIG = "bert_config.json"
GOOGLE_PREFIX = "bert_model.ckpt"
#: files copied from SRC to DST besides the config and the weights (the tokenizer)
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "encoder.json",
    "vocab.bpe",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def add_parser(subparsers, name):
    parser = subparsers.add_parser(
        name,
        help="convert between a Google TF checkpoint directory and an HF directory",
        description=__doc__.split("\n\n", 1)[1],
    )
    add_model_arguments(parser)
    parser.add_argument("dst", metavar="DST", help="output directory (created; must be empty)")
    parser.add_argument("--to", required=True, choices=("google", "hf"), help="format of DST")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16", "float16"),
        help="dtype of the written weights (default float32)",
    )
    parser.set_defaults(run=run)
    return parser


def convert(model_dir, dst, to, dtype="float32", progress=None):
    """Write `model_dir` to `dst` in format `to`; returns (transformer, max |difference|)."""
    import numpy as np

    from kerasformers.checkpoints.bfloat16 import numpy_bfloat16

    step = progress.update if progress is not None else (lambda n: None)
    heads = checkpoint_heads(model_dir)
    transformer = build(model_dir, **heads)
    step(1)
    try:
        config = transformer.hf_config()
    except NotImplementedError as e:
        raise CLIError(f"SRC {model_dir.path!r}: cannot be converted: {e}") from None
    numpy_dtype = numpy_bfloat16() if dtype == "bfloat16" else np.dtype(dtype)
    os.makedirs(dst, exist_ok=True)
    if to == "google":
        transformer.save_weights_as_checkpoint(
            os.path.join(dst, GOOGLE_PREFIX), naming="google", dtype=numpy_dtype
        )
        with open(os.path.join(dst, GOOGLE_CONFIG), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)
    else:
        transformer.save_weights_as_checkpoint(dst, naming="hf", dtype=numpy_dtype)
    for name in TOKENIZER_FILES:
        if os.path.isfile(os.path.join(model_dir.path, name)):
            shutil.copyfile(os.path.join(model_dir.path, name), os.path.join(dst, name))
    step(1)
    reloaded = build(open_model_dir(dst, model_dir.model), **heads)
    ours, theirs = transformer.variables(), reloaded.variables()
    if sorted(ours) != sorted(theirs):
        raise CLIError(f"DST {dst!r}: the reloaded model has other weights than SRC")
    diff = max(
        float(np.max(np.abs(np.asarray(ours[p].numpy()) - np.asarray(theirs[p].numpy()))))
        for p in ours
    )
    step(1)
    return transformer, diff


def run(args):
    from tqdm import tqdm

    model_dir = open_model_dir(args.path, args.model)
    if os.path.exists(args.dst) and (not os.path.isdir(args.dst) or os.listdir(args.dst)):
        raise CLIError(f"DST {args.dst!r} exists and is not an empty directory")
    if os.path.abspath(args.dst) == os.path.abspath(args.path):
        raise CLIError("DST must differ from SRC")
    with tqdm(total=3, desc="convert", unit="step", leave=False) as progress:
        transformer, diff = convert(model_dir, args.dst, args.to, args.dtype, progress)
    print(
        f"wrote {args.dst} ({args.to}, {args.dtype}): {model_dir.model}, "
        f"{transformer.model.count_params():,} parameters"
    )
    print(f"verified by reloading: max |difference| of the weights = {diff:.3g}")
