"""Compile and run a pretraining job with Keras `fit`: the optimizer recipe, checkpoints, resume.

`compile_pretraining` applies bert4keras' pretraining recipe with Keras 3 parts:
AdamW (weight decay 0.01, `Norm` and `bias` excluded), a linear warm-up to the
peak learning rate then a linear decay to 0 (`PiecewiseLinearSchedule`),
optional gradient accumulation, and the masked-token loss and accuracy as a
Keras loss and metric (bert4keras needed identity-loss `Lambda` layers).

`fit_pretraining` is `model.fit` over `data.batches(start)`, with a
`TrainingCheckpoint` every `save_every` steps: run it again with the same
arguments after an interruption and it resumes from the newest checkpoint
exactly where the interrupted run was (weights, optimizer, dropout random
state and data position), so the loss curve continues as if never stopped.
An "epoch" of `fit` is `steps_per_epoch` steps (default `save_every`), so
checkpoints fall on epoch boundaries and Keras' running epoch means resume
exactly too.

    model = build_transformer_model(config, with_mlm="linear", dropout_rate=0.1)
    compile_pretraining(model, 1e-3, warmup_steps=1000, total_steps=20000)
    data = PretrainingData("shards/", MaskedLM(...), batch_size=32)
    fit_pretraining(model, data, total_steps=20000, directory="run/", save_every=1000)
"""

import keras

from kerasformers import optimizers as optimizers_lib
from kerasformers.pretraining.checkpoint import TrainingCheckpoint, restore_checkpoint
from kerasformers.pretraining.losses import MaskedAccuracy, MaskedLMLoss
from kerasformers.pretraining.positions import takes_positions


def compile_pretraining(
    model,
    learning_rate,
    warmup_steps,
    total_steps,
    weight_decay=0.01,
    exclude_from_weight_decay=("Norm", "bias"),
    gradient_accumulation_steps=None,
    clipnorm=None,
    beta_2=0.999,
    epsilon=1e-6,
    jit_compile="auto",
):
    """Compile `model` (logits out) for MLM / LM / UniLM pretraining; returns the optimizer.

    Schedules count optimizer *updates*: with gradient accumulation over k
    batches, `warmup_steps` and `total_steps` are in updates and are scaled
    by k for Keras (whose schedule sees every micro-batch).
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"need 0 <= warmup_steps < total_steps, got {warmup_steps} and {total_steps}"
        )
    scale = gradient_accumulation_steps or 1
    points = {int(total_steps * scale): 0.0}
    if warmup_steps:
        points = {int(warmup_steps * scale): 1.0, **points}
    else:
        points = {0: 1.0, **points}
    schedule = optimizers_lib.PiecewiseLinearSchedule(learning_rate, points)
    optimizer = keras.optimizers.AdamW(
        schedule,
        weight_decay=weight_decay,
        beta_2=beta_2,
        epsilon=epsilon,
        clipnorm=clipnorm,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    if exclude_from_weight_decay:
        optimizers_lib.exclude_weight_decay(optimizer, model, list(exclude_from_weight_decay))
    model.compile(
        optimizer, loss=MaskedLMLoss(), metrics=[MaskedAccuracy()], jit_compile=jit_compile
    )
    return optimizer


def fit_pretraining(
    model,
    data,
    total_steps,
    directory,
    save_every=1000,
    steps_per_epoch=None,
    callbacks=(),
    keep=2,
    verbose="auto",
    validation_data=None,
):
    """Train a compiled `model` on `data` up to `total_steps`, resuming from `directory`.

    Returns the Keras `History` of this call (None if the run was already done).
    """
    steps_per_epoch = int(steps_per_epoch or save_every)
    if save_every % steps_per_epoch or total_steps % steps_per_epoch:
        raise ValueError(
            f"save_every ({save_every}) and total_steps ({total_steps}) must be "
            f"multiples of steps_per_epoch ({steps_per_epoch}): checkpoints and "
            "the end fall on epoch boundaries so a resume is exact"
        )
    if hasattr(data, "check_vocab"):
        data.check_vocab(vocab_size=_vocab_size(model))
    _check_positions(model, data)
    start = restore_checkpoint(model, directory, data=data)
    if start % steps_per_epoch:
        raise ValueError(
            f"the checkpoint in {directory} is at step {start}, not a multiple of "
            f"steps_per_epoch={steps_per_epoch}: resume with the steps_per_epoch "
            "of the interrupted run"
        )
    if start >= total_steps:
        return None
    checkpoint = TrainingCheckpoint(directory, save_every, initial_step=start, data=data, keep=keep)
    return model.fit(
        data.batches(start),
        epochs=total_steps // steps_per_epoch,
        initial_epoch=start // steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        callbacks=[checkpoint, *callbacks],
        verbose=verbose,
        validation_data=validation_data,
        shuffle=False,
    )


def _check_positions(model, data):
    """Data with labelled positions needs a `masked_positions_model`, and the reverse."""
    wanted = getattr(data, "masked_positions", None)
    if wanted is None:
        return
    takes = takes_positions(model)
    if wanted is not False and not takes:
        raise ValueError(
            "the data yields masked positions (PretrainingData(masked_positions=...)) but "
            "the model has no positions input: train masked_positions_model(model)"
        )
    if wanted is False and takes:
        raise ValueError(
            "the model takes masked positions (masked_positions_model) but the data does "
            "not yield them: PretrainingData(..., masked_positions=True)"
        )


def _vocab_size(model):
    try:
        return int(model.get_layer("Embedding-Token").input_dim)
    except (ValueError, AttributeError):
        return None
