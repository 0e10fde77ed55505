"""`kerasformers encode PATH --input texts.txt --output vecs.npy`: one vector per line.

Each line of the input file (UTF-8) is tokenized with the model directory's
tokenizer (truncated to --max-length tokens), run through the encoder in batches,
and pooled: `cls` takes the first token's hidden state, `mean` averages the
hidden states of the line's tokens (padding excluded). The output is a float32
array [lines, hidden_size] saved with numpy.save.
"""

import os

from kerasformers.cli.model_dir import (
    CLIError,
    add_model_arguments,
    build,
    model_inputs,
    open_model_dir,
    tokenizer,
)


def positive_int(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def add_parser(subparsers, name):
    parser = subparsers.add_parser(
        name,
        help="sentence vectors for each line of a text file, saved as .npy",
        description=__doc__.split("\n\n", 1)[1],
    )
    add_model_arguments(parser)
    parser.add_argument("--input", required=True, help="UTF-8 text file, one text per line")
    parser.add_argument("--output", required=True, help="the .npy file to write")
    parser.add_argument("--pool", choices=("cls", "mean"), default="cls", help="default cls")
    parser.add_argument("--batch-size", type=positive_int, default=32, help="default 32")
    parser.add_argument(
        "--max-length", type=positive_int, default=512, help="tokens per text (default 512)"
    )
    parser.set_defaults(run=run)
    return parser


def encode(transformer, tokenizer, texts, pool="cls", batch_size=32, max_length=512, progress=None):
    """float32 [len(texts), hidden_size]: `pool`ed hidden states of each text."""
    import numpy as np

    from kerasformers.data import sequence_padding

    out = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        encoded = [tokenizer.encode(text, maxlen=max_length) for text in batch]
        # every batch padded to batch_size rows and a power-of-two length (>= 8, at most
        # max_length): a handful of shapes, so JAX and TensorFlow compile a few times only
        length = min(bucket(max(len(ids) for ids, _ in encoded), 8), max_length)
        rows = encoded + [encoded[0]] * (batch_size - len(encoded))
        token_ids = sequence_padding([ids for ids, _ in rows], length=length)
        segment_ids = sequence_padding([segments for _, segments in rows], length=length)
        inputs = model_inputs(transformer, token_ids, segment_ids)
        hidden = transformer.model.predict_on_batch(inputs)
        hidden = np.asarray(hidden, dtype="float32")[: len(encoded)]
        if pool == "cls":
            out.append(hidden[:, 0])
        else:
            lengths = np.array([len(ids) for ids, _ in encoded])
            mask = (np.arange(hidden.shape[1])[None] < lengths[:, None]).astype("float32")
            out.append((hidden * mask[..., None]).sum(1) / lengths[:, None])
        if progress is not None:
            progress.update(len(batch))
    if not out:
        return np.zeros((0, transformer.hidden_size), "float32")
    return np.concatenate(out).astype("float32")


def bucket(n, minimum=1):
    """The smallest power of two >= max(n, minimum).

    >>> [bucket(n, 8) for n in (1, 8, 9, 100)]
    [8, 8, 16, 128]
    """
    return 1 << (max(int(n), int(minimum), 1) - 1).bit_length()


def read_lines(path, what="--input"):
    if not os.path.isfile(path):
        raise CLIError(f"{what} {path!r} is not a file")
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as e:
        raise CLIError(f"{what} {path!r} is not UTF-8 text ({e})") from None


def run(args):
    import numpy as np
    from tqdm import tqdm

    texts = read_lines(args.input)
    if not texts:
        raise CLIError(f"--input {args.input!r} has no lines")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise CLIError(f"--output {args.output!r}: directory {folder!r} does not exist")
    if not args.output.endswith(".npy"):
        raise CLIError(f"--output {args.output!r} must end in .npy")
    model_dir = open_model_dir(args.path, args.model)
    tok = tokenizer(model_dir)
    transformer = build(model_dir)
    if getattr(transformer, "tied_lm_output", False) or getattr(transformer, "is_seq2seq", False):
        raise CLIError(
            f"PATH {args.path!r}: encode needs an encoder (bert, roberta, albert, nezha, "
            f"electra, roformer), not {model_dir.model}"
        )
    with tqdm(total=len(texts), desc="encode", unit="text", leave=False) as progress:
        vectors = encode(
            transformer, tok, texts, args.pool, args.batch_size, args.max_length, progress
        )
    np.save(args.output, vectors)
    print(f"wrote {args.output}: {vectors.shape[0]} x {vectors.shape[1]} float32 ({args.pool})")
