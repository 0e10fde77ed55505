"""`kerasformers info PATH`: what a model directory holds and how it loads.

Prints the format, model key, config, parameter count, the heads found in the
checkpoint, and the weight table: each model weight with its shape, the
checkpoint tensor it loads from and whether it loads (or is missing, or has
another shape), then the checkpoint tensors this model does not use.
"""

from kerasformers.cli.model_dir import (
    add_model_arguments,
    build,
    checkpoint_heads,
    load_report,
    open_model_dir,
    structure_only,
)


def add_parser(subparsers, name):
    parser = subparsers.add_parser(
        name,
        help="model type, config, parameter count and weight table of a model directory",
        description=__doc__.split("\n\n")[1],
    )
    add_model_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def describe(model_dir):
    """The report `info` prints, as a list of lines."""

    from kerasformers.checkpoints import loader
    from kerasformers.checkpoints.sources import open_checkpoint

    source = open_checkpoint(model_dir.checkpoint)
    heads = checkpoint_heads(model_dir, source)
    with structure_only():  # values only from the checkpoint, none drawn at random
        transformer = build(model_dir, load=False, **heads)
        report = load_report(transformer, model_dir)
    import keras

    lines = [
        f"path: {model_dir.path}",
        f"backend: {keras.backend.backend()}",
        f"format: {model_dir.kind} ({source.naming} names, {source.path})",
        f"model: {model_dir.model} ({type(transformer).__name__})",
        f"heads: {', '.join(sorted(heads)) or 'none'}",
        f"parameters: {transformer.model.count_params():,}",
        f"config ({model_dir.config_path}):",
    ]
    lines += [f"  {key}: {value}" for key, value in sorted(model_dir.config.items())]
    column = loader.naming_column(source.naming)
    keys = {row[0]: loader.as_key(row[column]) for row in transformer.weight_table()}
    status = dict.fromkeys(report.loaded, "loaded")
    status.update({path: "MISSING" for path, _ in report.missing})
    status.update({path: f"SHAPE {tuple(found)}" for path, _, _, found in report.mismatched})
    status.update({path: "WRONG DTYPE" for path, *_ in report.wrong_dtype})
    status.update({path: "NOT FINITE" for path, *_ in report.not_finite})
    rows = []
    for path, variable in transformer.variables().items():
        key = keys.get(path)
        rows.append(
            (
                path,
                str(tuple(variable.shape)),
                key.name if key is not None else "-",
                status.get(path, "not in table" if key is None else "MISSING"),
            )
        )
    widths = [
        max(len(r[i]) for r in rows + [("weight", "shape", "checkpoint", "")]) for i in (0, 1, 2)
    ]
    lines.append(
        f"weights: {len(report.loaded)} of {len(rows)} load"
        + (f", {len(rows) - len(report.loaded)} do not" if len(rows) != len(report.loaded) else "")
    )
    lines.append(
        f"  {'weight':<{widths[0]}}  {'shape':<{widths[1]}}  {'checkpoint':<{widths[2]}}  status"
    )
    for path, shape, key, state in rows:
        lines.append(f"  {path:<{widths[0]}}  {shape:<{widths[1]}}  {key:<{widths[2]}}  {state}")
    unused = report.unused + report.unexpected
    lines.append(f"unused checkpoint tensors: {len(unused)}")
    for name in unused:
        lines.append(f"  {name}  {tuple(source.shape(name))}")
    return lines


def run(args):
    model_dir = open_model_dir(args.path, args.model)
    for line in describe(model_dir):
        print(line)
