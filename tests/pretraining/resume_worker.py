"""A pretraining process for test_resume.py: trains, checkpoints, and can be told to stall.

python resume_worker.py SHARDS RUN_DIR TOTAL_STEPS [--stall-after STEP]

Writes RUN_DIR/epochs.jsonl (one line per epoch of 5 steps: loss, accuracy) and, when
done, RUN_DIR/final.npz (every model variable, keyed by position). With --stall-after,
it sleeps forever once the checkpoint of that step is written (the test kills it).
"""

import argparse
import json
import sys
import time
from pathlib import Path

import keras
import numpy as np

from kerasformers import build_transformer_model
from kerasformers.pretraining.objectives import MaskedLM
from kerasformers.pretraining.pipeline import PretrainingData
from kerasformers.pretraining.trainer import compile_pretraining, fit_pretraining

VOCAB, SEQ = 300, 32


class Log(keras.callbacks.Callback):
    def __init__(self, path, stall_after, run_dir):
        super().__init__()
        self.path, self.stall_after, self.run_dir = path, stall_after, run_dir

    def on_epoch_end(self, epoch, logs=None):
        with open(self.path, "a") as f:
            f.write(
                json.dumps(
                    {
                        "epoch": epoch,
                        "loss": float(logs["loss"]),
                        "accuracy": float(logs["masked_accuracy"]),
                    }
                )
                + "\n"
            )
        # the checkpoint was written in the epoch's last on_train_batch_end
        done = (self.run_dir / f"step-{self.stall_after:08d}" / "meta.json").exists()
        if self.stall_after and done:
            print("STALLED", flush=True)
            time.sleep(3600)


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("shards")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("total_steps", type=int)
    parser.add_argument("--stall-after", type=int, default=0)
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(0)
    model = build_transformer_model(
        None,
        model="bert",
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        dropout_rate=0.1,
        with_mlm="linear",
    )
    compile_pretraining(model, 2e-3, warmup_steps=4, total_steps=args.total_steps)
    objective = MaskedLM(VOCAB, mask_id=4, special_ids=[0, 1, 2, 3, 4], sequence_length=SEQ)
    data = PretrainingData(args.shards, objective, batch_size=4, seed=7)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    log = Log(args.run_dir / "epochs.jsonl", args.stall_after, args.run_dir)
    fit_pretraining(
        model,
        data,
        args.total_steps,
        args.run_dir,
        save_every=10,
        steps_per_epoch=5,
        callbacks=[log],
        verbose=0,
    )
    np.savez(
        args.run_dir / "final.npz",
        **{str(i): keras.ops.convert_to_numpy(v.value) for i, v in enumerate(model.variables)},
    )
    print("DONE", flush=True)


if __name__ == "__main__":
    sys.exit(main())
