"""Generation speed: kerasformers `generate` per Keras backend vs transformers' `model.generate`.

Model: GPT2-small-sized random weights (12 layers, n_embd 768, 12 heads, n_inner 3072, vocab
50257, n_positions 1024, ``gelu_new``), float32, inference, the same model and weight
randomisation as decoder.py. Prompts: 32 tokens each, drawn uniformly from 1..vocab-1 with
seed 0 (8 different prompts; batch-1 modes use the first). Every call generates exactly
``--new-tokens`` (default 128) new tokens: nothing can stop it early (no eos token), and
nothing is padded (all prompts have the same length). ``--quick`` uses 2 layers instead of
12, as a smoke check.

Modes (``--mode``, default all three; each gets its own table):

* ``greedy1``: greedy search, batch 1;
* ``greedy8``: greedy search, batch 8 (8 different prompts);
* ``beam4``: beam search, ``num_beams=4``, batch 1, ``length_penalty=1.0``,
  ``early_stopping=False``, one returned sequence.

Contenders, per mode:

* transformers: ``GPT2LMHeadModel`` exactly as in decoder.py (``.eval()``, default attention
  implementation SDPA, LayerNorm gammas / biases / matrices randomised), called as
  ``model.generate(input_ids, attention_mask=ones, do_sample=False, num_beams=...,
  max_new_tokens=N, min_new_tokens=N, eos_token_id=None, pad_token_id=0)`` (beam4 adds
  ``length_penalty=1.0, early_stopping=False``) under ``torch.inference_mode()``; everything
  else is its default (its default DynamicCache). ``model.generation_config`` has
  ``eos_token_id`` / ``bos_token_id`` set to None too, so no eos is suppressed or stops a row
  (GPT2Config's default eos is 50256); the all-ones attention mask keeps transformers from
  inferring one from the pad id. Its output is cut to the new tokens, [rows, N].
* ours: ``build_transformer_model(checkpoint_path=tmpdir, return_keras_model=False)`` on the
  directory that ``save_pretrained`` wrote, one process per Keras backend (``KERAS_BACKEND``
  set in its environment), called as ``generate(model, prompts, max_new_tokens=N,
  num_beams=..., length_penalty=1.0, early_stopping=False, eos_token_id=None,
  pad_token_id=0)`` (kerasformers.generation: static key/value cache, one compiled prefill,
  then the whole greedy or beam-search loop as one compiled ``while_loop``: ``jax.jit`` on
  jax, XLA ``tf.function`` on TensorFlow; on torch a Python loop of eager steps whose common
  layers run as plain torch calls, ``backends/torch/plan.py``). The model object keeps its
  Runner (compiled prefill and loops), so only the first call compiles; that first call is
  reported separately.
* ours in reduced precision (``greedy1`` only, ``--low-precision``): the same checkpoint built
  with ``dtype="bfloat16"`` (weights and compute in bfloat16) and built in float32 then
  ``model.quantize("int8")`` (Keras' int8 Dense and our int8 Embedding / tied LM head:
  per-token int8 inputs, int8 x int8 products; on torch a batch-1 step runs them as oneDNN's
  prepacked int8 linear, ``backends/torch/kernels.py``). Their tokens are not expected to equal
  float32's: the table reports the share of tokens equal to transformers' float32 greedy
  tokens ("agreement") instead of max|d|, and their ratio is vs transformers' float32.
* cacheless (``greedy1`` only): a bert4keras-style decoder, ``AutoRegressiveDecoder``
  (kerasformers.generation, API-compatible with bert4keras') subclassed the way bert4keras'
  GPT examples do: ``predict`` runs the whole sequence so far (prompt + tokens generated)
  through the Keras model, ``self.last_token(model).predict_on_batch(ids)`` (the model's
  default softmax output, last position only), and ``beam_search([prompt], topk=1)``
  (= greedy) runs it ``N`` times, with ``start_id=None`` (the prompt is the start) and
  ``end_id=None`` (nothing ends it). No cache: step t costs a forward over 32 + t tokens, so
  its rate falls as sequences grow; it is measured at ``--cacheless-tokens`` new tokens
  (default N and 2N: 128 and 256), each in its own row. It runs on ``--cacheless-backend``
  (default tensorflow: the fastest ``predict_on_batch`` in decoder.py, and on CPU Keras runs
  it as a ``tf.function`` with ``reduce_retracing``, so the growing length is traced about
  twice in all; jax's ``predict_on_batch`` would compile once per length). Its ratio is vs
  transformers at N new tokens, whatever its own token count.

The reference varies: the random GPT2 has every matrix at std 0.05 (decoder.py; at HF's
0.02 greedy decoding repeated 1-5 ids in 128 tokens). transformers' row reports, per mode,
``distinct_tokens`` (distinct ids per row; fewer than a quarter of the new tokens stops the
run) and for greedy modes ``min_top2_margin`` (the smallest gap between the two best logits
over every step) and ``steps_margin_below_1e-4``.

Validity: generated tokens must be identical to transformers': max |ours - transformers| over
the token ids must be 0 (the harness's ``max|d| < 1`` on integers). Beam search compares the
returned sequence too. The cacheless rows are checked against transformers' greedy tokens at
their own length (the same prefix-consistent greedy run, generated once at the longest length
needed). A path that differs anywhere is reported INVALID, with ``differing`` (how many
tokens differ) and ``first_at`` ([row, step] of the first difference), and does not count. A
random model's top two logits are sometimes close enough for float32 reassociation to swap
them (decoder.py measured logit deltas of ~4e-6); such a swap shows up here as INVALID.

Every contender runs in its own worker process (this script with ``--child --backend X``;
transformers is ``--backend transformers``, first, and writes the checkpoint, prompts and
reference tokens). Workers start one at a time, so the first call (compilation/tracing
included) and ``--warmup`` more calls run on an otherwise idle machine. Then the timing is
interleaved: ``--runs`` rounds, and in each round every path of every worker (all modes) does
``--reps`` calls in turn (the order rotates each round) while the other workers sit idle,
blocked on their stdin. A path's time per call in a round is that round's total / ``--reps``;
the reported time is the median over rounds. Defaults are fewer rounds than encoder.py /
decoder.py (``--runs 3 --reps 1 --warmup 1``): one call takes seconds.

Threads: 2 everywhere (``torch.set_num_threads(2)``; TensorFlow intra-op 2 / inter-op 1;
``OMP_NUM_THREADS=2``; XLA keeps its default pool, one thread per core = 2 on this machine).

tokens/s = batch * new tokens / median seconds per generate call (beam search: batch * new
tokens, not * beams; the time includes the prefill of the prompt); ratio = ours tokens/s /
transformers tokens/s in the same mode. Results go to ``benchmarks/results/generation.json``
(``generation-quick.json`` with ``--quick``), with the date, machine and versions. The
worker/timing/report machinery is shared with encoder.py and decoder.py in
``benchmarks/harness/``.

Run: ``python benchmarks/generation.py [--quick] [--mode greedy1 greedy8 beam4]
[--new-tokens 128] [--cacheless-tokens 128 256] [--cacheless-backend tensorflow]
[--backends jax torch tensorflow] [--runs 3] [--reps 1] [--warmup 1]``
"""

import os

from decoder import model_config, random_gpt2  # the same GPT2-small reference

import harness

THREADS = harness.THREADS
PROMPT_LEN, PROMPTS = 32, 8
MIN_DISTINCT = 16  # distinct new ids per row below which a reference is degenerate
#: mode: (batch, num_beams)
MODES = {"greedy1": (1, 1), "greedy8": (8, 1), "beam4": (1, 4)}
TITLES = {
    "greedy1": "greedy search, batch 1",
    "greedy8": "greedy search, batch 8",
    "beam4": "beam search (num_beams 4), batch 1",
}


def header(cfg):
    return f"{cfg['num_hidden_layers']} layers, n_embd {cfg['hidden_size']}"


def add_arguments(p):
    p.add_argument(
        "--mode",
        nargs="+",
        choices=list(MODES),
        default=list(MODES),
        help="workloads: greedy batch 1, greedy batch 8, beam search (4 beams) "
        "batch 1 (default all)",
    )
    p.add_argument(
        "--new-tokens",
        type=int,
        default=128,
        help="new tokens per generate call, exactly (default 128)",
    )
    p.add_argument(
        "--cacheless-tokens",
        type=int,
        nargs="*",
        default=None,
        help="new tokens of the cacheless decoder's rows, greedy1 only (default: "
        "new-tokens and twice that; none: no cacheless rows)",
    )
    p.add_argument(
        "--cacheless-backend",
        choices=harness.BACKENDS,
        default="tensorflow",
        help="Keras backend of the cacheless decoder (default tensorflow)",
    )
    p.add_argument(
        "--low-precision",
        nargs="*",
        choices=["bfloat16", "int8"],
        default=["bfloat16", "int8"],
        help="greedy1 rows with bfloat16 weights and int8-quantized weights "
        "(model.quantize('int8')), per backend (default both; none: no rows)",
    )


def cacheless_tokens(args):
    if "greedy1" not in args.mode:
        return []
    if args.cacheless_tokens is None:
        return [args.new_tokens, 2 * args.new_tokens]
    return list(args.cacheless_tokens)


def workload(args):
    return (
        f"prompts of {PROMPT_LEN} tokens, {args.new_tokens} new tokens, modes {' '.join(args.mode)}"
    )


def run_config(args):
    return {
        "prompt_len": PROMPT_LEN,
        "new_tokens": args.new_tokens,
        "modes": args.mode,
        "cacheless_tokens": cacheless_tokens(args),
        "cacheless_backend": args.cacheless_backend,
        "validity": "generated token ids identical to transformers'",
    }


def group_title(mode, args):
    return f"{mode}: {TITLES[mode]}, {PROMPT_LEN}-token prompt, {args.new_tokens} new tokens"


def describe(out, reference):
    """How many tokens differ, and [row, step] of the first one (when the shapes agree)."""
    import numpy as np

    if out.shape != reference.shape:
        return {}
    diff = np.argwhere(out != reference)
    if not len(diff):
        return {}
    return {"differing": int(len(diff)), "first_at": [int(i) for i in diff[0]]}


def make_prompts(vocab_size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(1, vocab_size, size=(PROMPTS, PROMPT_LEN)).astype("int64")


def check_args(args):
    longest = max([args.new_tokens] + cacheless_tokens(args))
    if args.new_tokens < 1 or min(cacheless_tokens(args), default=1) < 1:
        raise SystemExit("--new-tokens and --cacheless-tokens must be >= 1")
    if PROMPT_LEN + longest > model_config(args.quick)["max_position"]:
        raise SystemExit(f"{PROMPT_LEN} + {longest} tokens exceed the model's positions")
    return longest


# ------------------------------------------------------------------------ transformers
def decisive_reference(model, prompts, mode, new_tokens):
    """transformers' tokens for `mode` and facts about them: distinct ids per row and
    (greedy) the smallest top-two logit margin over all steps, with the number of steps
    under 1e-4 (float32 reassociation moves these logits by ~1e-5: a smaller margin can
    swap a token). SystemExit if a row holds fewer than MIN_DISTINCT distinct ids: a
    degenerate reference agrees with wrong code (#20). (Greedy decoding of random weights
    settles into a repeating cycle after some tokens: measured 31 distinct ids in 256 at
    batch 1; the unperturbed gains of #20 gave 1-5.)"""
    import numpy as np
    import torch

    batch, beams = MODES[mode]
    ids = torch.from_numpy(prompts[:batch])
    kwargs = dict(num_beams=beams, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    if beams > 1:
        kwargs.update(length_penalty=1.0, early_stopping=False, num_return_sequences=1)
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            return_dict_in_generate=True,
            output_scores=beams == 1,
            **kwargs,
        )
    tokens = out.sequences[:, PROMPT_LEN:].numpy()
    facts = {"distinct_tokens": [len(set(row)) for row in tokens.tolist()]}
    if beams == 1:
        scores = torch.stack(out.scores, 1).float().numpy()
        top2 = np.partition(scores, -2, axis=-1)[..., -2:]
        margins = top2[..., 1] - top2[..., 0]
        facts["min_top2_margin"] = float(f"{margins.min():.3g}")
        facts["steps_margin_below_1e-4"] = int((margins < 1e-4).sum())
    if min(facts["distinct_tokens"]) < MIN_DISTINCT:
        raise SystemExit(f"{mode}: degenerate reference, distinct ids per row {facts}")
    print(f"  reference {mode}: {facts}", flush=True)
    return tokens, facts


def transformers_paths(args):
    """Build GPT2LMHeadModel, save it (checkpoint + prompts + reference tokens) to the workdir."""
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    longest = check_args(args)
    cfg = model_config(args.quick)
    model = random_gpt2(cfg, os.path.join(args.workdir, "hf"))
    gen_cfg = model.generation_config
    gen_cfg.eos_token_id = gen_cfg.bos_token_id = None
    gen_cfg.pad_token_id = 0

    prompts = make_prompts(cfg["vocab_size"])

    def caller(mode, new_tokens):
        batch, beams = MODES[mode]
        ids = torch.from_numpy(prompts[:batch])
        kwargs = dict(
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            num_beams=beams,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            eos_token_id=None,
            pad_token_id=0,
        )
        if beams > 1:
            kwargs.update(length_penalty=1.0, early_stopping=False, num_return_sequences=1)

        def call():
            with torch.inference_mode():
                return model.generate(ids, **kwargs)[:, PROMPT_LEN:]

        return call

    references, paths, facts = {}, [], {}
    for mode in args.mode:
        n = longest if mode == "greedy1" else args.new_tokens
        out, facts[mode] = decisive_reference(model, prompts, mode, n)
        assert out.shape == (MODES[mode][0], n), (mode, out.shape)  # nothing stopped early
        references[mode] = out[:, : args.new_tokens]
        if mode == "greedy1":  # greedy is prefix-consistent: one run gives every length
            for k in cacheless_tokens(args):
                references[f"greedy1_{k}"] = out[:, :k]
        name = (
            f"model.generate({'greedy' if MODES[mode][1] == 1 else 'beam search'}) + "
            f"inference_mode, attn={model.config._attn_implementation}"
        )
        paths.append(
            (
                name,
                caller(mode, args.new_tokens),
                harness.identity,
                {
                    "group": mode,
                    "reference": references[mode],
                    "tokens": MODES[mode][0] * args.new_tokens,
                    "facts": facts[mode],
                },
            )
        )
    np.savez(os.path.join(args.workdir, "data.npz"), prompts=prompts, **references)
    return paths, None


# ------------------------------------------------------------------------------- ours
def cacheless_decoder(model, new_tokens):
    """bert4keras-style greedy decoding: the whole sequence through the Keras model each step."""
    import numpy as np

    from kerasformers.generation import AutoRegressiveDecoder

    class CachelessDecoder(AutoRegressiveDecoder):
        @AutoRegressiveDecoder.wraps(default_rtype="probas")
        def predict(self, inputs, output_ids, states):
            token_ids = np.concatenate([inputs[0], output_ids], 1)
            return self.last_token(model).predict_on_batch(token_ids)

    decoder = CachelessDecoder(start_id=None, end_id=None, maxlen=new_tokens)
    return lambda prompt: decoder.beam_search([prompt], topk=1)


def low_precision_model(args, precision):
    """The same checkpoint with bfloat16 weights (dtype policy 'bfloat16': weights and
    compute) or float32 weights quantized to int8 (Keras `quantize('int8')`)."""
    from kerasformers import build_transformer_model

    path = os.path.join(args.workdir, "hf")
    if precision == "bfloat16":
        return build_transformer_model(
            checkpoint_path=path, dtype="bfloat16", return_keras_model=False
        )
    obj = build_transformer_model(checkpoint_path=path, return_keras_model=False)
    obj.model.quantize("int8")
    return obj


def our_paths(backend, args):
    """[(name, fn, sync, options)]: generate (and cacheless) paths per mode."""
    import numpy as np

    from kerasformers import build_transformer_model
    from kerasformers.generation import generate

    check_args(args)
    data = np.load(os.path.join(args.workdir, "data.npz"))
    prompts = data["prompts"]
    obj = build_transformer_model(
        checkpoint_path=os.path.join(args.workdir, "hf"), return_keras_model=False
    )
    paths = []
    for mode in args.mode:
        batch, beams = MODES[mode]
        rows = list(prompts[:batch])
        options = {"group": mode, "reference": data[mode], "tokens": batch * args.new_tokens}
        kwargs = dict(
            max_new_tokens=args.new_tokens,
            num_beams=beams,
            length_penalty=1.0,
            early_stopping=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        what = "greedy" if beams == 1 else "beam search"
        paths.append(
            (
                f"generate(model, ...) {what}",
                lambda rows=rows, kwargs=kwargs: generate(obj, rows, **kwargs),
                harness.identity,
                options,
            )
        )
        if mode == "greedy1":
            for precision in args.low_precision:
                low = low_precision_model(args, precision)
                paths.append(
                    (
                        f"generate(model, ...) greedy, {precision} weights",
                        lambda rows=rows, kwargs=kwargs, low=low: generate(low, rows, **kwargs),
                        harness.identity,
                        {
                            **options,
                            "approximate": True,
                            "row": f"ours ({backend}), {precision} weights",
                        },
                    )
                )
        if mode == "greedy1" and backend == args.cacheless_backend:
            for n in cacheless_tokens(args):
                decode = cacheless_decoder(obj.model, n)
                paths.append(
                    (
                        f"AutoRegressiveDecoder.beam_search(topk=1), {n} new tokens, "
                        "predict_on_batch on the whole sequence",
                        lambda decode=decode: decode(prompts[0]),
                        lambda out: np.asarray(out).reshape(1, -1),
                        {
                            "group": mode,
                            "reference": data[f"greedy1_{n}"],
                            "tokens": n,
                            "row": f"cacheless decoder ({backend}), {n} tokens",
                        },
                    )
                )
    return paths, None


SPEC = harness.Spec(
    name="generation",
    doc=__doc__,
    script=os.path.abspath(__file__),
    batch=None,
    seq_len=None,
    model_config=model_config,
    header=header,
    transformers_paths=transformers_paths,
    our_paths=our_paths,
    tolerance=1,
    add_arguments=add_arguments,
    defaults={"runs": 3, "reps": 1, "warmup": 1},
    workload=workload,
    run_config=run_config,
    group_title=group_title,
    describe=describe,
)

if __name__ == "__main__":
    harness.main(SPEC)
