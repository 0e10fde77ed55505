"""Decoder forward-pass speed: kerasformers GPT2 per Keras backend vs transformers' GPT2LMHeadModel.

Model: GPT2-small-sized random weights (12 layers, n_embd 768, 12 heads, n_inner 3072, vocab
50257, n_positions 1024, ``gelu_new``), float32, inference; inputs are 8 sequences of 128
tokens (token ids drawn uniformly from 0..vocab-1 with seed 0; no padding, no attention mask:
the causal mask is the only one). The output timed and compared is the full logits tensor,
[8, 128, 50257], so every call includes the tied LM head (a [1024, 768] x [768, 50257] matmul,
about 30% of the model's FLOPs). ``--quick`` uses 2 layers instead of 12, as a smoke check
(the LM head then dominates).

* transformers: ``GPT2LMHeadModel(GPT2Config(..., resid_pdrop=0, embd_pdrop=0,
  attn_pdrop=0))``, ``.eval()``, default attention implementation (SDPA), under
  ``torch.inference_mode()``, called as ``model(input_ids=ids).logits``. Its LayerNorm
  gammas are randomised to 1 + 0.1 randn, every bias (LayerNorm betas, Conv1D biases) to
  0.02 randn (HF initialises them to 1/0), so a swapped or missing weight in our loader would
  show in the check below, and every matrix (embeddings included) to 0.05 randn: at HF's
  0.02 the residual stream is mostly the token's own embedding, and greedy decoding
  (generation.py) repeated 1-5 ids in 128 tokens.
* ours: ``build_transformer_model(checkpoint_path=tmpdir, final_activation='linear')`` on the
  directory that ``save_pretrained`` wrote (the model, ``gpt2``, is detected from its
  config.json; the Keras model's only input is the token ids), one process per Keras backend
  (``KERAS_BACKEND`` set in its environment). Every inference path is tried: jax
  ``jax.jit(model.stateless_call)``; torch ``model(x, training=False)`` under
  ``torch.inference_mode()``; TensorFlow ``tf.function`` with and without
  ``jit_compile=True``; ``model.predict_on_batch`` on all three. Each one's logits are checked
  against transformers' and the fastest valid path is the backend's number.

Validity: max |ours - transformers| over all 51 million logits < 1e-3, as in encoder.py. The
absolute criterion is not too tight here: the logits of this random model stay small (max |8.1|,
std 1.39; 7.9 with ``--quick``), and the deltas measured on every path and backend were
7.6e-6 to 1.8e-5, float32 reassociation noise, more than 50x below the tolerance.

Every contender runs in its own worker process (this script with ``--child --backend X``;
transformers is ``--backend transformers``). Workers start one at a time, so the first call
(compilation/tracing included, reported separately) and ``--warmup`` more calls run on an
otherwise idle machine. Then the timing is interleaved: ``--runs`` rounds, and in each round
every path of every worker does ``--reps`` calls in turn (the order rotates each round)
while the other workers sit idle, blocked on their stdin. A path's time per call in a round
is that round's total / ``--reps``; the reported time is the median over rounds. Interleaving
spreads the noise of a shared machine over all contenders instead of whichever ran during a
noisy minute.

Threads: 2 everywhere (``torch.set_num_threads(2)``; TensorFlow intra-op 2 / inter-op 1;
``OMP_NUM_THREADS=2``; XLA keeps its default pool, one thread per core = 2 on this machine).

tokens/s = 8 * 128 / median seconds; ratio = ours tokens/s / transformers tokens/s.
Results go to ``benchmarks/results/decoder.json`` (``decoder-quick.json`` with ``--quick``),
with the date, machine and versions. The worker/timing/report machinery is shared with
encoder.py in ``benchmarks/harness/``.

Run: ``python benchmarks/decoder.py [--quick] [--backends jax torch tensorflow]
[--runs 7] [--reps 3] [--warmup 2]``
"""

import os

import harness
from harness import identity

BATCH, SEQ = 8, 128
THREADS = harness.THREADS
#: std of every weight matrix (embeddings included) of the random GPT2: at HF's init
#: (0.02) the residual stream is mostly the token's own embedding and greedy decoding
#: repeats 1-5 ids in 128 tokens; at 0.05 (2 layers) 103-112 distinct ids
MATRIX_STD = 0.05


def model_config(quick):
    return dict(
        vocab_size=50257,
        hidden_size=768,
        num_hidden_layers=2 if quick else 12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position=1024,
    )


def random_gpt2(cfg, folder):
    """transformers' GPT2LMHeadModel of `cfg` sizes, seed 0, no dropout, LayerNorm gammas
    1 + 0.1 randn, biases 0.02 randn (HF initialises them to 1/0, which would hide a
    swapped weight) and every matrix MATRIX_STD randn (so generation varies); saved to
    `folder` (save_pretrained) and returned in eval mode."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=cfg["vocab_size"],
        n_embd=cfg["hidden_size"],
        n_layer=cfg["num_hidden_layers"],
        n_head=cfg["num_attention_heads"],
        n_inner=cfg["intermediate_size"],
        n_positions=cfg["max_position"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif name.endswith(".bias"):
                p.copy_(0.02 * torch.randn_like(p))
            else:  # every matrix: at HF's std 0.02 greedy repeats 1-5 ids (#20)
                p.copy_(MATRIX_STD * torch.randn_like(p))
    model.eval()
    model.save_pretrained(folder)
    return model


def header(cfg):
    return (
        f"{cfg['num_hidden_layers']} layers, n_embd {cfg['hidden_size']}, "
        f"vocab {cfg['vocab_size']} (logits out)"
    )


def make_inputs(vocab_size, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab_size, size=(BATCH, SEQ)).astype("int32")


# ------------------------------------------------------------------------ transformers
def transformers_paths(args):
    """Build GPT2LMHeadModel, save it (checkpoint + inputs + reference logits) to the workdir."""
    import numpy as np
    import torch

    torch.set_num_threads(THREADS)
    cfg = model_config(args.quick)
    model = random_gpt2(cfg, os.path.join(args.workdir, "hf"))

    token_ids = make_inputs(cfg["vocab_size"])
    ids = torch.from_numpy(token_ids.astype("int64"))

    def forward():
        with torch.inference_mode():
            return model(input_ids=ids).logits

    with torch.inference_mode():
        reference = forward().numpy()
    np.savez(os.path.join(args.workdir, "data.npz"), token_ids=token_ids, reference=reference)
    name = f"GPT2LMHeadModel.eval() + inference_mode, attn={model.config._attn_implementation}"
    return [(name, forward, identity)], reference


# ------------------------------------------------------------------------------- ours
def our_paths(backend, args):
    """[(name, fn, sync)]: the inference paths tried on this backend (harness.keras_paths)."""
    import numpy as np

    from kerasformers import build_transformer_model

    data = np.load(os.path.join(args.workdir, "data.npz"))
    x_np = [data["token_ids"]]
    model = build_transformer_model(
        checkpoint_path=os.path.join(args.workdir, "hf"), final_activation="linear"
    )
    paths = harness.keras_paths(backend, model, x_np)
    return paths, data["reference"]


SPEC = harness.Spec(
    name="decoder",
    doc=__doc__,
    script=os.path.abspath(__file__),
    batch=BATCH,
    seq_len=SEQ,
    model_config=model_config,
    header=header,
    transformers_paths=transformers_paths,
    our_paths=our_paths,
    tolerance=1e-3,
)

if __name__ == "__main__":
    harness.main(SPEC)
