"""`kerasformers serve PATH`: the HTTP server (OpenAI-style embeddings and completions,
fill-mask, tokenize, a page at /) with dynamic batching, from `kerasformers.serving`.

Binds to 127.0.0.1 by default; pass --host 0.0.0.0 to listen on every interface.
"""

from kerasformers.cli.encode import positive_int
from kerasformers.cli.model_dir import add_model_arguments, open_model_dir


def positive_float(text):
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def port(text):
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {text!r}")
    return value


#: option -> serve() keyword; options not given keep serve()'s defaults
OPTIONS = ("max_batch_size", "max_wait_ms", "queue_size", "timeout_s", "pool")


def add_parser(subparsers, name):
    parser = subparsers.add_parser(
        name, help="serve a model over HTTP with dynamic batching", description=__doc__
    )
    add_model_arguments(parser, model_option=False)
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    parser.add_argument("--port", type=port, default=8000, help="default 8000")
    parser.add_argument(
        "--max-batch-size", type=positive_int, help="requests run as one batch (default 32)"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=positive_float,
        help="how long a request waits for others to batch with (default 5)",
    )
    parser.add_argument(
        "--queue-size", type=positive_int, help="waiting requests before 503 (default 1024)"
    )
    parser.add_argument(
        "--timeout-s", type=positive_float, help="per-request timeout in seconds (default 60)"
    )
    parser.add_argument("--pool", choices=("mean", "cls"), help="embeddings pooling (default mean)")
    parser.set_defaults(run=run)
    return parser


def serve_arguments(args):
    """serve()'s keyword arguments: host and port, and the options given."""
    kwargs = {"host": args.host, "port": args.port}
    kwargs.update({k: getattr(args, k) for k in OPTIONS if getattr(args, k) is not None})
    return kwargs


def run(args):
    open_model_dir(args.path)  # a bad PATH fails here, before the server starts
    from kerasformers.serving import serve

    serve(args.path, **serve_arguments(args))
