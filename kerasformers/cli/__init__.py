"""The `kerasformers` command line: convert, inspect, run, export and serve models.

Every command takes a model directory (HF: config.json + model.safetensors, or
Google: bert_config.json + bert_model.ckpt.*, each with its vocabulary) and has
`--help`. `--backend jax|torch|tensorflow` (before the command) picks Keras'
backend; Keras is imported only after it is set. Bad input prints
`kerasformers CMD: error: ...` naming the argument or path and exits with 2.

>>> main(["info", "/no/such/dir"])
2
"""

import argparse
import os
import sys

from kerasformers.cli.model_dir import CLIError

BACKENDS = ("jax", "torch", "tensorflow")

#: command name -> module (each has `add_parser(subparsers)` and `run(args)`)
COMMANDS = {
    "convert": "kerasformers.cli.convert",
    "info": "kerasformers.cli.info",
    "encode": "kerasformers.cli.encode",
    "fill-mask": "kerasformers.cli.fill_mask",
    "generate": "kerasformers.cli.generate",
    "export": "kerasformers.cli.export",
    "serve": "kerasformers.cli.serve",
}


def build_parser():
    import importlib

    parser = argparse.ArgumentParser(
        prog="kerasformers",
        description="Convert, inspect, run, export and serve BERT-era Transformer checkpoints.",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: KERAS_BACKEND, else Keras' configured one)",
    )
    from kerasformers import __version__

    parser.add_argument("--version", action="version", version=f"kerasformers {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(subparsers, name)
    return parser


def _set_backend(backend):
    if backend is None:
        return
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise CLIError(
                f"--backend {backend}: Keras is already imported with the "
                f"{keras.backend.backend()} backend in this process"
            )
        return
    os.environ["KERAS_BACKEND"] = backend


def main(argv=None):
    """Run the command line with `argv` (default: sys.argv[1:]); returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error argparse printed
        return e.code
    from kerasformers.checkpoints.errors import CheckpointError

    try:
        _set_backend(args.backend)
        return args.run(args) or 0
    except (CLIError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"kerasformers {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")
        return 0


__all__ = ["main", "CLIError"]
