"""Shared machinery of the model benchmarks (encoder.py, decoder.py, generation.py): ours vs
transformers.

A benchmark script describes its model in a `Spec` and ends in ``harness.main(SPEC)``. The
harness then does the rest, the same way for every model:

* the parent process starts one worker process per contender (the benchmark script itself with
  ``--child --backend X``; transformers is ``--backend transformers`` and runs first, because it
  writes the checkpoint, the inputs and the reference output to the shared workdir), one at a
  time, so every first call (compilation/tracing included) and the ``--warmup`` calls run on an
  otherwise idle machine;
* each worker builds its paths (``Spec.transformers_paths`` / ``Spec.our_paths``: a list of
  ``(name, fn, sync)``, where ``sync(fn())`` runs one complete call and returns its output),
  checks every path's output against the reference and reports back;
* a path may carry a 4th element, a dict of options (``PATH_OPTIONS``): a ``group`` (a
  benchmark with several workloads, e.g. generation's modes, gets one table per group, each
  path compared with the transformers path of its group), its own ``reference`` and
  ``tokens`` per call, a ``row`` label (reported in its own row, never the backend's number);
* timing is interleaved: ``--runs`` rounds, and in each round every path of every worker does
  ``--reps`` calls in turn (the order rotates each round) while the other workers sit idle,
  blocked on their stdin; a path's time per call in a round is the round's total / ``--reps``
  and the reported time is the median over rounds;
* the table reports each path's first call and, as "compile s", what it cost beyond the
  median call (compilation / tracing: first call - median, at least 0);
* the parent prints the table, writes ``benchmarks/results/<name>.json``
  (``<name>-quick.json`` with ``--quick``) with the date, machine, versions and git commit.

Threads: 2 everywhere (``torch.set_num_threads(2)``; TensorFlow intra-op 2 / inter-op 1;
``OMP_NUM_THREADS=2``; XLA keeps its default pool, one thread per core = 2 on this machine).

Modules: `spec` (`Spec`, path options, shared constants), `paths` (the Keras inference paths
per backend, proposed-fix patches), `process` (`ChildProcess`, the JSON pipe to a worker),
`worker` (the ``--child`` side), `parent` (workers in turn, interleaved rounds), `report`
(tables and the results JSON), `machine` (versions, CPU, git commit), `cli` (options, `main`).
"""

from .cli import main, parse_args
from .machine import cpu_steal, git_commit, machine_info, versions
from .parent import Worker, run_parent
from .paths import identity, keras_paths, method_patch, patched_paths
from .process import MARK, ChildProcess
from .report import STANDARD_KEYS, facts, summarise
from .spec import BACKENDS, FIX_TAG, PATH_OPTIONS, ROOT, THREADS, Spec, hf_bert_config
from .worker import run_child, set_threads, to_numpy

__all__ = [
    "hf_bert_config",
    "BACKENDS",
    "FIX_TAG",
    "MARK",
    "PATH_OPTIONS",
    "ROOT",
    "STANDARD_KEYS",
    "THREADS",
    "ChildProcess",
    "Spec",
    "Worker",
    "cpu_steal",
    "facts",
    "git_commit",
    "identity",
    "keras_paths",
    "machine_info",
    "main",
    "method_patch",
    "parse_args",
    "patched_paths",
    "run_child",
    "run_parent",
    "set_threads",
    "summarise",
    "to_numpy",
    "versions",
]
