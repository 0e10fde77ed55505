"""The port kit: each bert4keras example ported in examples/port/ runs its `--smoke` mode
(tiny random checkpoint, real text, one training step, evaluation and decoding) in this
process, through runpy with a patched argv, so Keras and the backend are imported once.

Marked `port_kit`: the whole module is meant for one backend leg (scripts/run_suite.py).
"""

import os
import runpy
import sys
import tempfile
from pathlib import Path

import keras
import numpy as np
import pytest

PORT = Path(__file__).resolve().parent.parent / "examples" / "port"

pytestmark = pytest.mark.port_kit


@pytest.fixture
def run(monkeypatch, tmp_path):
    """Run examples/port/<name>.py --smoke as __main__; return its globals."""
    monkeypatch.syspath_prepend(str(PORT))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the smoke run's files
    monkeypatch.chdir(tmp_path)
    own_fit = vars(keras.Model).get("fit")  # --smoke caps keras.Model.fit: put it back after

    def run_script(name):
        path = str(PORT / f"{name}.py")
        monkeypatch.setattr(sys, "argv", [path, "--smoke"])
        return runpy.run_path(path, run_name="__main__")

    yield run_script
    if own_fit is not None:
        keras.Model.fit = own_fit
    elif "fit" in vars(keras.Model):
        del keras.Model.fit


def trained_steps(ns):
    return int(keras.ops.convert_to_numpy(ns["model"].optimizer.iterations))


def check_extract_features(ns):
    assert os.path.exists("test.keras")  # saved, deleted, reloaded by the script
    assert ns["model"].predict([ns["token_ids"], ns["segment_ids"]], verbose=0).shape == (
        1,
        6,  # [CLS] 语 言 模 型 [SEP]
        32,  # smoke hidden size
    )


def check_masked_language_model(ns):
    assert ns["probas"].shape == (12, 21128)
    np.testing.assert_allclose(ns["probas"].sum(axis=1), 1.0, rtol=1e-4)


def check_gibbs_sampling(ns):
    assert len(ns["sentences"]) == ns["steps"] == 4
    assert len(ns["token_ids"]) == len(ns["tokenizer"].encode(ns["init_sent"])[0])  # resampled


def check_classifier(ns):
    assert trained_steps(ns) == 1  # one epoch of the smoke data: one batch
    assert ns["model"].output_shape[-1] in (2, 119)


def check_adversarial(ns):
    from kerasformers.training import AdversarialModel

    check_classifier(ns)
    assert isinstance(ns["model"], AdversarialModel) and ns["model"].epsilon == 0.5


def check_ner(ns):
    assert trained_steps(ns) == 1
    np.testing.assert_array_equal(ns["NER"].trans, keras.ops.convert_to_numpy(ns["CRF"].trans))
    assert ns["categories"] == ["LOC", "ORG", "PER"]


def check_gplinker(ns):
    assert trained_steps(ns) == 1
    assert os.path.exists("dev_pred.json")  # the evaluation ran under the EMA weights


def check_generator(decoder):
    def check(ns):
        assert trained_steps(ns) == 2  # forfit: steps_per_epoch capped at 2
        assert os.path.exists("best_model.weights.h5")  # saved after the epoch, then decoded
        assert ns[decoder].end_id == ns["tokenizer"]._token_end_id

    return check


SCRIPTS = {
    "basic_extract_features": check_extract_features,
    "basic_masked_language_model": check_masked_language_model,
    "basic_gibbs_sampling_via_mlm": check_gibbs_sampling,
    "task_sentiment_albert": check_classifier,
    "task_sentence_similarity_lcqmc": check_classifier,
    "task_iflytek_adversarial_training": check_adversarial,
    "task_sequence_labeling_ner_crf": check_ner,
    "task_relation_extraction_gplinker": check_gplinker,
    "task_seq2seq_autotitle": check_generator("autotitle"),
    "task_language_model": check_generator("story_completion"),
    "task_conditional_language_model": check_generator("random_sentiment"),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_smoke(run, name):
    SCRIPTS[name](run(name))


def test_every_port_is_tested():
    ports = {p.stem for p in PORT.glob("*.py")} - {"smoke", "diff_original"}
    assert ports == set(SCRIPTS)
