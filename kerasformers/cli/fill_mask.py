"""`kerasformers fill-mask PATH "今天天气很[MASK]。"`: the MLM head's best tokens per mask.

The text is tokenized with the model directory's tokenizer, each mask token
(`[MASK]`) kept as one token; the model is built with its MLM head (the
checkpoint must have one) and the --top-k most probable tokens of every masked
position are printed with their probabilities, best first.
"""

from kerasformers.cli.encode import positive_int
from kerasformers.cli.model_dir import (
    CLIError,
    add_model_arguments,
    build,
    checkpoint_heads,
    model_inputs,
    open_model_dir,
    tokenizer,
)


def add_parser(subparsers, name):
    parser = subparsers.add_parser(
        name,
        help="most probable tokens for each [MASK] in a text",
        description=__doc__.split("\n\n", 1)[1],
    )
    add_model_arguments(parser)
    parser.add_argument("text", metavar="TEXT", help="text with one or more [MASK] tokens")
    parser.add_argument("--top-k", type=positive_int, default=5, help="candidates (default 5)")
    parser.set_defaults(run=run)
    return parser


def mask_token_ids(tok, text):
    """Token ids of `text` with each mask token kept whole, and the masked positions."""
    if tok.mask_id is None:
        raise CLIError("the tokenizer has no mask token")
    mask = tok.id_to_token(tok.mask_id)
    parts = text.split(mask)
    if len(parts) == 1:
        raise CLIError(f"TEXT {text!r} has no {mask} token")
    tokens = []
    for i, part in enumerate(parts):
        inner = tok.tokenize(part)
        if inner and inner[0] == tok.token_start:
            inner = inner[1:]
        if inner and inner[-1] == tok.token_end:
            inner = inner[:-1]
        if i:
            tokens.append(mask)
        tokens += inner
    tokens = [t for t in (tok.token_start,) if t] + tokens + [t for t in (tok.token_end,) if t]
    ids = tok.tokens_to_ids(tokens)
    return ids, [i for i, t in enumerate(tokens) if t == mask]


def fill_mask(transformer, tok, text, top_k=5):
    """[(position, [(token, probability), ...]), ...] for each mask, best first."""
    import numpy as np

    ids, positions = mask_token_ids(tok, text)
    token_ids = np.array([ids], "int32")
    inputs = model_inputs(transformer, token_ids, np.zeros_like(token_ids))
    probs = np.asarray(transformer.model.predict_on_batch(inputs), dtype="float32")[0]
    out = []
    for position in positions:
        best = np.argsort(-probs[position], kind="stable")[:top_k]
        out.append((position, [(tok.id_to_token(int(i)), float(probs[position, i])) for i in best]))
    return out


def run(args):
    model_dir = open_model_dir(args.path, args.model)
    tok = tokenizer(model_dir)
    heads = checkpoint_heads(model_dir)
    if not heads.get("with_mlm"):
        raise CLIError(f"PATH {args.path!r}: the checkpoint has no MLM head weights")
    transformer = build(model_dir, with_mlm=True)
    for position, candidates in fill_mask(transformer, tok, args.text, args.top_k):
        print(f"[MASK] at token {position}:")
        for token, probability in candidates:
            print(f"  {token}\t{probability:.4f}")
