"""Test questions the adapter was trained on: counted per set, excluded on request, the real math file's counts."""

import csv
import json
import logging
import os
from pathlib import Path

import pytest
from peft import LoraConfig

from sibo import get_sibo_model
from sibo.cli import main as sibo_main
from sibo.decode.settings import DecodingSettings
from sibo.errors import InputError
from sibo.eval.config import EvalConfig
from sibo.eval.contamination import (
    QuestionIndex,
    answer_key,
    copies,
    normalise,
    question_words,
    recorded_data_columns,
    recorded_training_data,
    training_index,
    training_questions,
    word_overlap,
)
from sibo.eval.runner import evaluate, load_benchmarks
from sibo.eval.tasks import load_examples, resolve_datasets
from sibo.testing import build_tiny_model, build_tokenizer

QUESTIONS = [f"Tom has {a} apples and buys {b} more. How many apples does he have?" for a, b in
             [(1, 2), (3, 4), (10, 5), (7, 8), (2, 2)]]  # fmt: skip
ADDSUB = [{"instruction": q, "input": "", "output": "", "answer": str(i)} for i, q in enumerate(QUESTIONS)]
# Questions 1 and 3 again, re-spaced and re-cased as copies in other files are; one question of no test set.
TRAINING = [
    {"instruction": "  TOM has 3 apples and\tbuys 4 more.  How many apples does he have?", "output": "7"},
    {"instruction": QUESTIONS[3].upper(), "input": "", "output": "15"},
    {"instruction": "Ann has 2 pears. How many pears does she have?", "output": "2"},
    # question 4 with one word changed and "2" spelt out, the same answer: a near copy
    {
        "instruction": "Tom has two apples and gets 2 more. How many apples does he have?",
        "output": "The answer is 4.",
    },
]
# The test questions of each math set that math_train_3k does not hold, words and numbers compared.
# NOTES.md's counts compare whitespace- and case-normalised text; they hold 120 more questions that the
# training file holds with other spacing, punctuation or thousands separators (AddSub 18, SingleEq 22,
# mawps 80), each with the same answer there.
UNSEEN_IN_MATH_TRAIN_3K = {"AddSub": (61, 395), "MultiArith": (109, 600), "SingleEq": (80, 508),
                           "gsm8k": (264, 1319), "AQuA": (51, 254), "SVAMP": (200, 1000), "mawps": (104, 238)}  # fmt: skip
NOTES_MD_COUNTS = {
    "AddSub": 79,
    "MultiArith": 109,
    "SingleEq": 102,
    "gsm8k": 264,
    "AQuA": 51,
    "SVAMP": 200,
    "mawps": 184,
}


@pytest.fixture
def files(tmp_path):
    (tmp_path / "data" / "AddSub").mkdir(parents=True)
    (tmp_path / "data" / "AddSub" / "test.json").write_text(json.dumps(ADDSUB))
    (tmp_path / "train.json").write_text(json.dumps(TRAINING))
    return tmp_path


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer(QUESTIONS + ["The answer is 3."], vocab_size=300)
    return build_tiny_model("llama", len(tokenizer)), tokenizer


def answer_everything_with_3(model, tokenizer, prompts, **_):
    return ["The answer is 3."] * len(prompts)


def test_normalising_keeps_words_and_whole_numbers_only():
    assert normalise("  A\tb \n C ") == normalise("a b c") == "abc"
    # LLM-Adapters' copies of one question: spaced punctuation, thousands separators, split contractions
    assert normalise("has 2,041 part-time employees. How many?") == normalise(
        "has 2041 part-time employees . How many ? "
    )
    assert normalise("If 49 did n't leave a tip") == normalise("If 49 didn't leave a tip")
    # numbers stay whole: another number is another question
    assert normalise("sawed 0.33 meters") != normalise("sawed 33 meters")
    assert normalise("add 2 41") != normalise("add 241")
    assert normalise("Q", "ctx") != normalise("Q")


# A training question and its near copies in a test set: one word changed, punctuation or spelling moved.
ORIGINAL = "Joan found 70 seashells on the beach. She gave Sam some of her seashells. She has 27 seashells left. How many seashells did she give to Sam?"  # fmt: skip
NEAR_COPIES = [
    ORIGINAL.replace(" left.", " now."),  # one word changed
    ORIGINAL.replace("She has", "Joan has"),
    ORIGINAL.replace("beach. She", "beach , she").replace(
        "to Sam?", "to Sam in all ?"
    ),  # words added, spaced
    ORIGINAL.replace("some of her seashells", "some of her shells"),
]


def _index(*records: tuple[str, str]) -> QuestionIndex:
    index = QuestionIndex()
    for question, output in records:
        index.add(question, "", answer_key(output))
    return index


@pytest.mark.parametrize("question", NEAR_COPIES)
def test_a_one_word_or_punctuation_variant_with_the_same_numbers_and_answer_is_a_near_copy(question):
    index = _index((ORIGINAL, "She gave 70 - 27 = 43. The answer is 43."))
    assert index.copy_kind(question, "", answer_key("43.0")) == "near"
    punctuated = ORIGINAL.replace("beach. She", "beach , she").replace("Sam?", "Sam ?")
    assert index.copy_kind(punctuated, "", answer_key("43")) == index.copy_kind(ORIGINAL, "", "7") == "exact"


def test_number_words_are_numbers_and_other_numbers_or_answers_are_other_questions():
    index = _index(("Tom has two apples and buys 3 more. How many apples?", "The answer is 5."))
    assert (
        question_words("Tom has two apples")
        == question_words("tom has 2 apples")
        == ["tom", "has", "2", "apples"]
    )
    assert index.copy_kind("Tom has 2 apples and buys 3 more. How many apples?", "", "5") == "near"
    assert index.copy_kind("Tom has 2 apples and buys three more. How many apples?", "", "5") == "near"
    # another number, another question: however alike the words
    assert index.copy_kind("Tom has 2 apples and buys 4 more. How many apples?", "", "6") is None
    assert (
        index.copy_kind("Tom has 2 apples and buys 3 more. How many apples?", "", "6") is None
    )  # other answer
    # the same numbers and answer but a third of the words changed: another question
    assert index.copy_kind("Ann owns 2 pears and sells 3 less. How many pears?", "", "5") is None


# As LLM-Adapters' boolq records wrap every question
BOOLQ = "Please answer the following question with true or false, question: {}\n\nAnswer format: true/false"


def test_a_question_without_numbers_is_only_ever_an_exact_copy():
    """The template is most of a boolq question's words: two different questions with the same answer share
    20 of their 22 words, but are no copy of each other. A math near copy is still one."""
    from collections import Counter

    cape = BOOLQ.format("is a cape and a cloak the same?")
    woodchuck = BOOLQ.format("is a woodchuck and a groundhog the same?")
    assert word_overlap(Counter(question_words(cape)), Counter(question_words(woodchuck))) == pytest.approx(
        20 / 22
    )
    index = _index((cape, "the correct answer is true"), (ORIGINAL, "The answer is 43."))
    assert index.copy_kind(woodchuck, "", answer_key("true")) is None
    assert index.copy_kind(cape.upper(), "", answer_key("true")) == "exact"
    assert index.copy_kind(NEAR_COPIES[0], "", answer_key("43")) == "near"
    # nor is it kept for near-copy lookups: a large commonsense set is no quadratic scan
    assert list(index.buckets) == [(("27", "70"), "43")]


def test_the_overlap_is_shared_words_over_the_longer_question():
    """Each letter a word here: Counter("abcde") is the five words a, b, c, d, e."""
    from collections import Counter

    five = Counter("abcde")
    assert word_overlap(five, Counter("abcdx")) == pytest.approx(0.8)  # one of 5 changed: near
    assert word_overlap(five, Counter("abcxy")) == pytest.approx(0.6)
    assert word_overlap(five, Counter("abcdef")) == pytest.approx(5 / 6)  # a word added
    assert word_overlap(Counter("aab"), Counter("abb")) == pytest.approx(2 / 3)  # repeats count


@pytest.mark.parametrize(
    ("text", "answer"),
    [("576.0", "576"), ("The answer is 576.", "576"), ("x = 2,041 so the answer is 2,041 .", "2041"),
     ("The answer is (D).", "d"), ("the correct answer is answer3", "answer3"), ("answer3", "answer3"),
     ("10.333333333333334", "10.333333"), ("so 7 apples, then 9", "9"), ("", "")],
)  # fmt: skip
def test_the_answer_is_read_from_a_label_or_a_response(text, answer):
    assert answer_key(text) == answer


def test_questions_in_the_training_data_are_marked_seen(files):
    config = EvalConfig("AddSub", files / "data", files / "out", train_data=files / "train.json")
    [(task, examples)] = load_benchmarks(config)
    assert [example.seen for example in examples] == [False, True, False, True, True]
    [(_, unmarked)] = load_benchmarks(EvalConfig("AddSub", files / "data", files / "out"))
    assert not any(example.seen for example in unmarked)


def test_chat_training_data_is_asked_its_user_turns(files):
    """A test question is prompted as the user turn: a chat record holds it there (system and replies
    aside), and the reply after it gives its answer (the near copy of question 4 answers 4)."""
    chats = [
        {"messages": [{"role": "system", "content": QUESTIONS[0]}, {"role": "user", "content": record["instruction"]},
                      {"role": "assistant", "content": record["output"]}]}
        for record in TRAINING
    ]  # fmt: skip
    (files / "chat.json").write_text(json.dumps(chats))
    config = EvalConfig("AddSub", files / "data", files / "out", train_data=files / "chat.json")
    [(_, examples)] = load_benchmarks(config)
    assert [example.seen for example in examples] == [False, True, False, True, True]


@pytest.mark.parametrize("exclude", [False, True])
def test_the_log_and_summary_count_seen_questions_and_exclusion_scores_only_the_rest(
    files, tiny, monkeypatch, caplog, exclude
):
    monkeypatch.setattr("sibo.decode.batch.generate_batch", answer_everything_with_3)
    out = files / "out"
    config = EvalConfig("AddSub", files / "data", out, train_data=files / "train.json", exclude_seen=exclude,
                        decoding=DecodingSettings(batch_size=2))  # fmt: skip
    with caplog.at_level(logging.INFO, logger="sibo.eval.contamination"):
        results = evaluate(*tiny, config, run_info={"base_model": "tiny"})
    scored = [json.loads(line)["index"] for line in (out / "AddSub.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    message = "AddSub: 3 of 5 test questions appear in the training data: 2 exact, 1 near"
    if exclude:  # exact and near copies both dropped
        assert scored == [0, 2] and (results["AddSub"].n, results["AddSub"].correct) == (2, 0)
        assert caplog.messages == [f"{message}; scoring the 2 unseen ones"]
        assert summary["run"]["exclude_seen"] is True
    else:
        assert scored == [0, 1, 2, 3, 4] and (results["AddSub"].n, results["AddSub"].correct) == (5, 1)
        assert caplog.messages == [message]
        assert "exclude_seen" not in summary["run"]
    assert summary["datasets"]["AddSub"] == {
        "n": 2 if exclude else 5, "correct": 0 if exclude else 1, "accuracy": 0.0 if exclude else 0.2,
        "extraction": "careful", "seen_in_training": 3, "exact_copies": 2, "near_copies": 1, "test_questions": 5,
        "scored": "unseen only" if exclude else "all",
    }  # fmt: skip
    assert summary["train_data"] == str(files / "train.json")


def test_exclusion_without_training_data_is_refused():
    with pytest.raises(InputError, match="^exclude_seen needs the training data: pass --train_data FILE"):
        EvalConfig("AddSub", "data", "out", exclude_seen=True)


@pytest.mark.integration
def test_cli_refuses_a_set_with_nothing_unseen_before_any_model_loads(files, capsys):
    """0 of 0 is no accuracy: scored as 0.0 it would pass for one (and the sweep report's mean fails)."""
    (files / "all.json").write_text(json.dumps([{"instruction": q, "output": "x"} for q in QUESTIONS[:3]]))
    out = files / "out"
    code = sibo_main(["evaluate", "--base_model", "unused", "--dataset", "AddSub", "--data_dir", str(files / "data"),
                      "--output_dir", str(out), "--train_data", str(files / "all.json"), "--exclude_seen",
                      "--limit", "3"])  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        "sibo evaluate: error: AddSub: all 3 questions scored are in the training data: "
        "nothing is left with --exclude_seen\n"
    )
    assert not out.exists()


@pytest.mark.integration
def test_cli_reports_a_missing_training_file_in_one_line(files, capsys):
    out = files / "out"
    code = sibo_main(["evaluate", "--base_model", "unused", "--dataset", "AddSub", "--data_dir",
                      str(files / "data"), "--output_dir", str(out), "--train_data", str(files / "nope.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        f"sibo evaluate: error: training data file {files / 'nope.json'} not found "
        "(needed to find seen test questions)\n"
    )
    assert not out.exists()


@pytest.mark.integration
def test_cli_takes_the_training_file_from_the_adapters_run_config(files, tiny, capsys):
    """No --train_data: the adapter's run_config.json names the file; --exclude_seen scores the 2 others."""
    model, tokenizer = tiny
    model.save_pretrained(files / "base")
    tokenizer.save_pretrained(files / "base")
    adapter = get_sibo_model(model, LoraConfig(r=2, target_modules=["up_proj"]), lam=0.2)
    adapter.save_pretrained(files / "adapter")
    run_config = {"config": {"data_path": str(files / "train.json")}}
    (files / "adapter" / "run_config.json").write_text(json.dumps(run_config))
    out = files / "out"
    argv = ["evaluate", "--base_model", str(files / "base"), "--weights_path", str(files / "adapter"),
            "--dataset", "AddSub", "--data_dir", str(files / "data"), "--output_dir", str(out),
            "--num_beams", "1", "--max_new_tokens", "2", "--exclude_seen"]  # fmt: skip
    assert sibo_main(argv) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["AddSub", "2"]
    summary = json.loads((out / "summary.json").read_text())["datasets"]["AddSub"]
    assert (summary["seen_in_training"], summary["test_questions"], summary["scored"]) == (
        3,
        5,
        "unseen only",
    )


def test_training_data_in_any_shape_finetune_reads_with_its_recorded_columns(files):
    """A CSV with other column names, as `sibo finetune --data_columns` trained on it: the same 3 seen."""
    with (files / "train.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["question", "input", "answer"])
        writer.writeheader()
        writer.writerows({"question": r["instruction"], "input": "", "answer": r["output"]} for r in TRAINING)
    adapter = files / "adapter"
    adapter.mkdir()
    columns = "instruction=question,output=answer"
    run_config = {"config": {"data_path": str(files / "train.csv"), "data_columns": columns}}
    (adapter / "run_config.json").write_text(json.dumps(run_config))
    assert recorded_training_data(str(adapter)) == files / "train.csv"
    assert recorded_data_columns(str(adapter)) == columns
    config = EvalConfig("AddSub", files / "data", files / "out", train_data=files / "train.csv",
                        train_data_columns=columns)  # fmt: skip
    [(_, examples)] = load_benchmarks(config)
    assert [example.seen for example in examples] == [False, True, False, True, True]


# the team's copy beside the checkout, or $SIBO_DATA_DIR
MATH_DATA = Path(
    os.environ.get("SIBO_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared/data/llm-adapters"
)


@pytest.mark.skipif(
    not (MATH_DATA / "math_train_3k.json").is_file(), reason="needs ../shared/data/llm-adapters"
)
def test_math_train_3k_leaves_exactly_the_clean_questions_counted_here_and_notes_md_counts_spacing_alone():
    train = json.loads((Path(MATH_DATA) / "math_train_3k.json").read_text())
    questions = training_questions(Path(MATH_DATA) / "math_train_3k.json")
    by_spacing_and_case = {" ".join(r["instruction"].split()).lower() for r in train}
    assert (len(questions), len(by_spacing_and_case)) == (3172, 3251)
    found, notes = {}, {}
    for name in UNSEEN_IN_MATH_TRAIN_3K:
        examples = load_examples(resolve_datasets(name)[0], MATH_DATA)
        unseen = [e for e in examples if normalise(e.instruction, e.input) not in questions]
        found[name] = (len(unseen), len(examples))
        notes[name] = sum(
            " ".join(e.instruction.split()).lower() not in by_spacing_and_case for e in examples
        )
    assert found == UNSEEN_IN_MATH_TRAIN_3K
    assert notes == NOTES_MD_COUNTS


@pytest.mark.skipif(
    not (MATH_DATA / "math_train_3k.json").is_file(), reason="needs ../shared/data/llm-adapters"
)
def test_the_clean_math_questions_hold_42_near_copies_the_studys_ten_among_them():
    """Issue 34 found 10 near copies among the SmolLM2 study's 120 references (~43 of the 869 clean)."""
    index = training_index(Path(MATH_DATA) / "math_train_3k.json")
    near = {}
    for name in UNSEEN_IN_MATH_TRAIN_3K:
        found = copies(load_examples(resolve_datasets(name)[0], MATH_DATA), index)
        near[name] = {i for i, kind in found.items() if kind == "near"}
        assert (
            len(found) - len(near[name])
            == UNSEEN_IN_MATH_TRAIN_3K[name][1] - UNSEEN_IN_MATH_TRAIN_3K[name][0]
        )
    assert {name: len(ids) for name, ids in near.items()} == {
        "AddSub": 17, "MultiArith": 0, "SingleEq": 18, "gsm8k": 0, "AQuA": 0, "SVAMP": 3, "mawps": 4,
    }  # fmt: skip
    assert {317, 320, 321, 325, 326, 329, 335} <= near["AddSub"]
    assert {415, 418} <= near["SingleEq"] and 801 in near["SVAMP"]
