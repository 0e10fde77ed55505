"""`kerasformers generate PATH "prompt"`: continue a prompt with a causal LM.

For GPT-family directories (gpt2 HF directories, gpt / gpt2_ml Google ones).
Greedy by default; --do-sample samples (with --top-k, --top-p, --temperature,
--seed); --num-beams N runs beam search. --stream prints the text as it is
generated (greedy or sampling). Generation stops at the config's eos_token_id,
if it has one, or after --max-new-tokens.
"""

import sys

from kerasformers.cli.encode import positive_int
from kerasformers.cli.model_dir import (
    CLIError,
    add_model_arguments,
    build,
    open_model_dir,
    tokenizer,
)

SAMPLING = ("top_k", "top_p", "temperature", "seed")


def add_parser(subparsers, name):
    parser = subparsers.add_parser(
        name,
        help="continue a prompt with a causal language model (GPT-2, ...)",
        description=__doc__.split("\n\n", 1)[1],
    )
    add_model_arguments(parser)
    parser.add_argument("prompt", metavar="PROMPT", help="the text to continue")
    parser.add_argument("--max-new-tokens", type=positive_int, default=20, help="default 20")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy")
    parser.add_argument("--top-k", type=positive_int, help="sampling: keep the k best tokens")
    parser.add_argument("--top-p", type=float, help="sampling: nucleus probability mass")
    parser.add_argument("--temperature", type=float, help="sampling: divide the logits by it")
    parser.add_argument("--seed", type=int, help="sampling: seed (same tokens on every backend)")
    parser.add_argument("--num-beams", type=positive_int, default=1, help="beam search width")
    parser.add_argument("--stream", action="store_true", help="print text as it is generated")
    parser.set_defaults(run=run)
    return parser


def generation_settings(args, config):
    """`generate` keyword arguments from the parsed options and the model config."""
    given = [name for name in SAMPLING if getattr(args, name) is not None]
    if given and not args.do_sample:
        raise CLIError(
            ", ".join("--" + name.replace("_", "-") for name in given)
            + (" needs" if len(given) == 1 else " need")
            + " --do-sample (without it, decoding is greedy)"
        )
    settings = {"max_new_tokens": args.max_new_tokens, "num_beams": args.num_beams}
    if args.do_sample:
        settings["do_sample"] = True
        settings.update({name: getattr(args, name) for name in given})
    if config.get("eos_token_id") is not None:
        settings["eos_token_id"] = config["eos_token_id"]
    return settings


def prompt_ids(tok, prompt):
    ids, _ = tok.encode(prompt)
    if not ids:
        raise CLIError("PROMPT is empty after tokenization")
    return ids


def new_text(tok, tokens, eos_ids):
    """Text of the generated ids up to (not including) the first eos id."""
    out = []
    for token in tokens:
        if int(token) in eos_ids:
            break
        out.append(int(token))
    return tok.decode(out)


def run(args):
    from kerasformers.generation import generate, stream_generate

    model_dir = open_model_dir(args.path, args.model)
    tok = tokenizer(model_dir)
    transformer = build(model_dir)
    if not getattr(transformer, "tied_lm_output", False):
        raise CLIError(
            f"PATH {args.path!r}: generate needs a causal LM (gpt, gpt2, gpt2_ml), "
            f"not {model_dir.model}"
        )
    settings = generation_settings(args, model_dir.config)
    ids = prompt_ids(tok, args.prompt)
    if args.stream:
        sys.stdout.write(args.prompt)
        sys.stdout.flush()
        for pieces in stream_generate(transformer, [ids], tokenizer=tok, **settings):
            sys.stdout.write(pieces[0])
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    eos = settings.get("eos_token_id")
    eos_ids = set() if eos is None else set([eos] if isinstance(eos, int) else eos)
    tokens = generate(transformer, [ids], **settings)[0]
    print(args.prompt + new_text(tok, tokens, eos_ids))
