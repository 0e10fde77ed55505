"""What a benchmark measures (`Spec`), the options a path may carry, and the constants every
part of the harness shares."""

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

#: the repository (benchmarks/harness/spec.py is three levels down)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BACKENDS = ("jax", "torch", "tensorflow")
THREADS = 2
FIX_TAG = "[proposed fix] "
#: the options a path may carry as a 4th element: (name, fn, sync, {option: value})
PATH_OPTIONS = {
    "group": "workload the path belongs to: one table per group, ratios vs the transformers "
    "path of the same group",
    "reference": "the output to check against, instead of the worker's reference",
    "tokens": "tokens per call for tokens/s, instead of Spec.tokens",
    "row": "label of a row of its own in the group's table; never the backend's number",
    "approximate": "reduced precision (bf16, int8): never INVALID; the table shows the share "
    "of output elements equal to the reference ('agreement') instead of max|d|",
    "facts": "a dict of facts about the path's workload (e.g. the reference's distinct "
    "tokens), saved with the path and printed after its max|d|",
}


@dataclass
class Spec:
    """What a benchmark measures; everything else is the harness's.

    name: results go to ``benchmarks/results/<name>.json`` (``<name>-quick.json``).
    doc: the benchmark's docstring (its first line is the ``--help`` description).
    script: absolute path of the benchmark script; workers are launched with it.
    batch, seq_len: input shape; tokens per call = batch * seq_len.
    model_config(quick): dict of model sizes, printed in the header and saved in the JSON.
    header(cfg): the model part of the header line, e.g. "12 layers, hidden 768".
    transformers_paths(args): builds the reference, saves checkpoint + inputs + reference output
        to ``args.workdir``; returns ``([(name, fn, sync)], reference)``.
    our_paths(backend, args): returns ``([(name, fn, sync)], reference)``; appends
        ``proposed_fix_paths`` itself when ``args.try_fixes`` (it holds the model and inputs).
    tolerance: a path is valid if max |out - reference| < tolerance, or with ``relative=True``
        if max |out - reference| / max |reference| < tolerance.
    fix_help: help of ``--try-fixes``; None = the benchmark has no proposed fix (no flag).

    Optional hooks, for benchmarks whose workload is not one batch x seq_len call:
    add_arguments(parser): adds the benchmark's own options; the harness forwards their values
        to the workers.
    defaults: overrides of the harness's option defaults, e.g. ``{"runs": 3, "reps": 1}``.
    workload(args): replaces "batch B x S tokens" in the header line.
    run_config(args): replaces ``{"batch": B, "seq_len": S}`` in the JSON's config.
    group_title(group, args): the title printed above a group's table (default: the group).
    describe(out, reference): extra facts about a path's output (a dict, e.g. where it first
        differs), saved with the path and printed after its max|d|.
    """

    name: str
    doc: str
    script: str
    batch: int
    seq_len: int
    model_config: Callable[[bool], dict]
    header: Callable[[dict], str]
    transformers_paths: Callable
    our_paths: Callable
    tolerance: float = 1e-3
    relative: bool = False
    fix_help: Optional[str] = None
    add_arguments: Optional[Callable] = None
    defaults: dict = field(default_factory=dict)
    workload: Optional[Callable] = None
    run_config: Optional[Callable] = None
    group_title: Optional[Callable] = None
    describe: Optional[Callable] = None

    @property
    def tokens(self):
        return self.batch * self.seq_len

    def criterion(self):
        if self.relative:
            return f"max|d| / max|ref| >= {self.tolerance:g}"
        return f"max|d| >= {self.tolerance:g}"

    def workload_text(self, args):
        if self.workload:
            return self.workload(args)
        return f"batch {self.batch} x {self.seq_len} tokens"

    def config_entries(self, args):
        if self.run_config:
            return self.run_config(args)
        return {"batch": self.batch, "seq_len": self.seq_len}


def hf_bert_config(cfg, dropout=0.0, attention_dropout=0.0):
    """transformers' `BertConfig` for one of the benchmarks' model configs (the sizes of
    `cfg`, erf GELU), built where transformers is imported: in a reference worker."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        intermediate_size=cfg["intermediate_size"],
        max_position_embeddings=cfg["max_position"],
        hidden_act="gelu",
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=attention_dropout,
    )
