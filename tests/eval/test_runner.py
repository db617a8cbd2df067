"""`sibo evaluate`: data checks, batched decoding, resumable output, data parallel, the CLI end to end."""

import copy
import json
import threading

import pytest
import torch
from peft import LoraConfig

import sibo.decode.batch as batch_module
from sibo import get_sibo_model
from sibo.cli import main as sibo_main
from sibo.core.merge import merge_for_inference
from sibo.decode.batch import MAX_AUTO_BATCH_SIZE, auto_batch_size, generate_batch
from sibo.decode.settings import DecodingSettings
from sibo.errors import InputError
from sibo.eval.config import EvalConfig
from sibo.eval.results import score
from sibo.eval.runner import Shard, evaluate, load_benchmarks
from sibo.eval.tasks import load_examples, resolve_datasets
from sibo.prompts import PromptTemplate, build_prompt
from sibo.testing import build_tiny_model, build_tokenizer

ADDSUB = [
    {"instruction": f"Tom has {a} apples and buys {b} more. How many apples does Tom have?", "input": "",
     "output": "", "answer": str(a + b)}
    for a, b in [(1, 2), (3, 4), (10, 5), (7, 8), (2, 2), (9, 1), (12, 30)]
]  # fmt: skip
BOOLQ = [
    {"instruction": f"Please answer the following question with true or false, question: is {word} a color?"
     "\n\nAnswer format: true/false", "input": "", "output": "", "answer": answer}
    for word, answer in [("red", "true"), ("a dog", "false"), ("blue", "true"), ("a car", "false"), ("green", "true")]
]  # fmt: skip


def write_dataset(root, name, records):
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "test.json").write_text(json.dumps(records))


@pytest.fixture
def data_dir(tmp_path):
    root = tmp_path / "data"
    write_dataset(root, "AddSub", ADDSUB)
    write_dataset(root, "boolq", BOOLQ)
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny LLaMA, its tokenizer, and a SIBO-boosted LoRA on it (random B, so λ matters), saved to disk."""
    root = tmp_path_factory.mktemp("tiny")
    corpus = [
        build_prompt(r["instruction"]) + " The answer is 12. the correct answer is true"
        for r in ADDSUB + BOOLQ
    ]
    tokenizer = build_tokenizer(corpus, vocab_size=400)
    base = build_tiny_model("llama", len(tokenizer), num_layers=2, hidden_size=32)
    tokenizer.save_pretrained(root / "base")
    base.save_pretrained(root / "base")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["gate_proj", "up_proj"], init_lora_weights=False)
    model = get_sibo_model(base, lora, lam=0.3).eval()
    model.save_pretrained(root / "adapter")
    return model, tokenizer, root


# -- reading the benchmarks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (None, r"dataset file .*AddSub/test.json not found"),
        ('[{"instruction": "x",', r"AddSub/test.json: not valid JSON \(.* at line 1"),
        ('{"instruction": "x"}', r"expected a JSON list of records, found a dict"),
        ('[{"instruction": "x", "answer": "4"}, {"instruction": "y"}]', r"record 1: missing 'answer'"),
        ('[{"instruction": "x", "answer": "four"}]', r"record 0: answer 'four' is not a valid AddSub label"),
        ('[{"instruction": "", "answer": "4"}]', r"record 0: 'instruction' must be a non-empty string"),
    ],
)
def test_bad_dataset_files_are_named(tmp_path, content, message):
    if content is not None:
        (tmp_path / "AddSub").mkdir()
        (tmp_path / "AddSub" / "test.json").write_text(content)
    with pytest.raises(InputError, match=message):
        load_examples(resolve_datasets("AddSub")[0], tmp_path)


def test_a_dataset_file_that_is_a_folder_is_named_as_one(tmp_path):
    (tmp_path / "AddSub" / "test.json").mkdir(parents=True)
    with pytest.raises(InputError) as raised:
        load_examples(resolve_datasets("AddSub")[0], tmp_path)
    assert (
        str(raised.value) == f"dataset file {tmp_path / 'AddSub' / 'test.json'} is a folder, not a JSON file"
    )


def test_labels_are_checked_per_family(tmp_path):
    write_dataset(tmp_path, "AQuA", [{"instruction": "q (A) 1 (B) 2", "answer": "F"}])
    write_dataset(tmp_path, "piqa", [{"instruction": "q", "answer": "answer1"}])
    with pytest.raises(InputError, match="answer 'F' is not a valid AQuA label"):
        load_examples(resolve_datasets("AQuA")[0], tmp_path)
    with pytest.raises(InputError, match="answer 'answer1' is not a valid piqa label"):
        load_examples(resolve_datasets("piqa")[0], tmp_path)
    write_dataset(tmp_path, "gsm8k", [{"instruction": "q", "input": "ctx", "answer": 18}])
    [example] = load_examples(resolve_datasets("gsm8k")[0], tmp_path)
    assert (example.index, example.input, example.label) == (0, "ctx", "18")


@pytest.mark.integration
def test_cli_reports_a_missing_dataset_in_one_line(tmp_path, data_dir, capsys):
    out = tmp_path / "out"
    code = sibo_main(["evaluate", "--base_model", "unused", "--dataset", "AddSub,SVAMP",
                      "--data_dir", str(data_dir), "--output_dir", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sibo evaluate: error: dataset file ")
    assert "SVAMP/test.json not found" in err
    assert not out.exists()


def test_evaluate_decodes_with_upstreams_beams_and_each_benchmarks_budget():
    assert EvalConfig("gsm8k", ".", ".").decoding.num_beams == 4
    assert (
        EvalConfig("gsm8k", ".", ".").decoding.tokens_or(resolve_datasets("gsm8k")[0].max_new_tokens) == 256
    )
    assert DecodingSettings().tokens_or(resolve_datasets("boolq")[0].max_new_tokens) == 32


@pytest.mark.parametrize("num_beams", [1, 4])
def test_an_answer_run_on_into_a_new_prompt_scores_as_the_answer_alone(
    tiny, data_dir, script_model, num_beams
):
    model, tokenizer, _ = tiny
    task, examples = load_benchmarks(EvalConfig("AddSub", data_dir, data_dir / "unused"))[0]
    example = examples[2]  # 10 + 5
    answer = "10 + 5 = 15."
    run_on = f"{answer}\n\n### Instruction:\nWhat is 7 + 9?\n\n### Response:\n7 + 9 = 16"
    tokens = tokenizer(run_on, add_special_tokens=False)["input_ids"]
    script_model(model, tokens)
    prompt = build_prompt(example.instruction)
    # a named cache skips prefill_once, whose extra forward would advance the script by one token
    responses = generate_batch(
        model,
        tokenizer,
        [prompt, prompt],
        DecodingSettings(num_beams=num_beams, max_new_tokens=len(tokens)),
        cache_implementation="dynamic",
    )
    assert responses == [answer, answer]
    assert PromptTemplate().response(run_on) == answer  # cut even when decoding ran on (a stop string missed)
    for extraction in ("careful", "legacy"):
        assert score(task, example, responses[0], extraction)["correct"]
    # uncut, the seed's rule reads the last number before its own cut at "### Response:": the new question's
    assert score(task, example, run_on, "legacy")["prediction"] == 9.0


def test_prompts_that_cannot_fit_the_context_stop_the_run_before_any_output(tiny, data_dir, tmp_path):
    model, tokenizer, _ = tiny
    longest = max(len(tokenizer(build_prompt(r["instruction"]))["input_ids"]) for r in ADDSUB)
    config = EvalConfig(
        "AddSub,boolq", data_dir, tmp_path / "out", decoding=DecodingSettings(num_beams=4, max_new_tokens=500)
    )
    message = (
        rf"AddSub example \d: its prompt is {longest} tokens and max_new_tokens is 500, more than "
        rf"the model's context of 512 tokens: use --max_new_tokens {512 - longest} or less"
    )
    with pytest.raises(InputError, match=message):
        evaluate(model, tokenizer, config)
    assert not (tmp_path / "out").exists()


# -- resumable output, with a scripted model ----------------------------------------------------


def scripted_responses(calls: list):
    """A stand-in for generate_batch. AddSub: i%3==0 no number; i%3==1 right, then a stray number
    (careful right, legacy wrong); else right. boolq: right, but "False" capitalised (legacy misses it)."""
    answers = {}
    for index, record in enumerate(ADDSUB):
        kind = index % 3
        answer = record["answer"]
        responses = ("I do not know.", f"The answer is {answer}. Next, 99", f"So {answer}.")
        answers[build_prompt(record["instruction"])] = responses[kind]
    for record in BOOLQ:
        answers[build_prompt(record["instruction"])] = (
            "the correct answer is true" if record["answer"] == "true" else "The correct answer is False"
        )

    def fake(model, tokenizer, prompts, settings=None, template=None, **_):
        calls.append(len(prompts))
        return [answers[prompt] for prompt in prompts]

    return fake


def run(model, tokenizer, data_dir, out, shard=None, batch_size=3, extraction="careful"):
    config = EvalConfig(
        "AddSub,boolq",
        data_dir,
        out,
        extraction,
        decoding=DecodingSettings(num_beams=4, batch_size=batch_size),
    )
    return evaluate(model, tokenizer, config, run_info={"base_model": "tiny"}, shard=shard)


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scores_summary_and_table(tiny, data_dir, tmp_path, monkeypatch):
    model, tokenizer, _ = tiny
    monkeypatch.setattr(batch_module, "generate_batch", scripted_responses([]))
    results = run(model, tokenizer, data_dir, tmp_path / "out")
    assert {name: (r.n, r.correct) for name, r in results.items()} == {"AddSub": (7, 4), "boolq": (5, 5)}
    records = lines(tmp_path / "out" / "AddSub.jsonl")
    assert [r["index"] for r in records] == list(range(7))
    assert records[1] == {
        "index": 1, "instruction": ADDSUB[1]["instruction"], "input": "", "output": "The answer is 7. Next, 99",
        "prediction": 7.0, "label": "7", "correct": True,
    }  # fmt: skip
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["datasets"]["AddSub"] == {"n": 7, "correct": 4, "accuracy": 4 / 7, "extraction": "careful"}
    assert summary["extraction"] == "careful" and summary["run"]["num_beams"] == 4


def test_resume_after_a_kill_matches_an_unbroken_run(tiny, data_dir, tmp_path, monkeypatch):
    model, tokenizer, _ = tiny
    monkeypatch.setattr(batch_module, "generate_batch", scripted_responses([]))
    run(model, tokenizer, data_dir, tmp_path / "unbroken")

    calls = []
    fake = scripted_responses(calls)

    def killed_after_two_batches(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        return fake(*args, **kwargs)

    monkeypatch.setattr(batch_module, "generate_batch", killed_after_two_batches)
    with pytest.raises(KeyboardInterrupt):
        run(model, tokenizer, data_dir, tmp_path / "resumed")
    partial = tmp_path / "resumed" / "AddSub.jsonl"
    assert len(partial.read_text().splitlines()) == 6  # two batches of 3, appended as produced
    with partial.open("a") as out:
        out.write('{"index": 6, "instruction": "Tom has 12 app')  # the kill tore the line being written

    calls.clear()
    monkeypatch.setattr(batch_module, "generate_batch", fake)
    run(model, tokenizer, data_dir, tmp_path / "resumed")
    assert calls == [1, 3, 2]  # only AddSub's last example, then all of boolq
    for name in ("AddSub.jsonl", "boolq.jsonl"):
        assert (tmp_path / "resumed" / name).read_text() == (tmp_path / "unbroken" / name).read_text()
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("unbroken", "resumed")]
    assert summaries[0] == summaries[1]


def test_a_finished_run_is_rescored_without_decoding(tiny, data_dir, tmp_path, monkeypatch):
    model, tokenizer, _ = tiny
    monkeypatch.setattr(batch_module, "generate_batch", scripted_responses([]))
    run(model, tokenizer, data_dir, tmp_path / "out")
    calls = []
    monkeypatch.setattr(batch_module, "generate_batch", scripted_responses(calls))
    results = run(model, tokenizer, data_dir, tmp_path / "out", extraction="legacy")
    assert calls == []
    assert {name: (r.n, r.correct) for name, r in results.items()} == {"AddSub": (7, 2), "boolq": (5, 3)}
    assert [r["prediction"] for r in lines(tmp_path / "out" / "AddSub.jsonl")][:3] == [None, 99.0, 15.0]
    assert [r["prediction"] for r in lines(tmp_path / "out" / "boolq.jsonl")][:2] == ["true", ""]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["extraction"] == "legacy"


def test_auto_batch_size_halves_on_out_of_memory(tiny, data_dir, tmp_path, monkeypatch):
    model, tokenizer, _ = tiny
    monkeypatch.setattr(batch_module, "generate_batch", scripted_responses([]))
    run(model, tokenizer, data_dir, tmp_path / "reference")
    calls = []
    fake = scripted_responses(calls)

    def small_gpu(model, tokenizer, prompts, *args, **kwargs):
        if len(prompts) > 2:
            calls.append(-len(prompts))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return fake(model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(batch_module, "generate_batch", small_gpu)
    run(model, tokenizer, data_dir, tmp_path / "auto", batch_size="auto")
    # AddSub's 7 in one batch (auto: 8 on CPU), out of memory, 4, again, then 2 at a time; boolq alike
    assert calls == [-7, -4, 2, 2, 2, 1, -5, -4, 2, 2, 1]
    for name in ("AddSub.jsonl", "boolq.jsonl"):
        assert (tmp_path / "auto" / name).read_text() == (tmp_path / "reference" / name).read_text()
    with pytest.raises(torch.cuda.OutOfMemoryError):  # a size the user chose is not second-guessed
        run(model, tokenizer, data_dir, tmp_path / "fixed", batch_size=3)


def test_a_static_cache_scores_like_the_dynamic_one(tiny, data_dir, tmp_path):
    model, tokenizer, _ = tiny
    for name in ("dynamic", "static"):
        decoding = DecodingSettings(num_beams=1, max_new_tokens=6, static_cache=name == "static")
        evaluate(model, tokenizer, EvalConfig("AddSub", data_dir, tmp_path / name, decoding=decoding))
    assert (tmp_path / "static" / "AddSub.jsonl").read_text() == (
        tmp_path / "dynamic" / "AddSub.jsonl"
    ).read_text()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_merged_auto_batched_compiled_decoding_scores_like_the_plain_run(tiny, data_dir, tmp_path):
    model, tokenizer, _ = tiny
    plain = copy.deepcopy(model).to("cuda")  # fp32, so merged and unmerged agree token for token
    merged = merge_for_inference(copy.deepcopy(model)).to("cuda")
    assert 1 <= auto_batch_size(merged, 200, 256, 4) <= MAX_AUTO_BATCH_SIZE
    runs = {
        "plain": (plain, DecodingSettings(num_beams=4, batch_size=3, max_new_tokens=8)),
        "fast": (
            merged,
            DecodingSettings(num_beams=4, batch_size="auto", max_new_tokens=8, static_cache=True),
        ),
    }
    for name, (each, decoding) in runs.items():
        evaluate(each, tokenizer, EvalConfig("AddSub,boolq", data_dir, tmp_path / name, decoding=decoding))
    for file in ("AddSub.jsonl", "boolq.jsonl"):
        assert (tmp_path / "fast" / file).read_text() == (tmp_path / "plain" / file).read_text()


def test_an_output_dir_of_another_run_is_refused(tiny, data_dir, tmp_path, monkeypatch):
    model, tokenizer, _ = tiny
    monkeypatch.setattr(batch_module, "generate_batch", scripted_responses([]))
    run(model, tokenizer, data_dir, tmp_path / "out")
    config = EvalConfig("AddSub", data_dir, tmp_path / "out", decoding=DecodingSettings(num_beams=1))
    with pytest.raises(
        InputError, match=r"holds another evaluate run \(num_beams 4 there, 1 now\): pass --overwrite"
    ):
        evaluate(model, tokenizer, config, run_info={"base_model": "tiny"})
    write_dataset(data_dir, "AddSub", list(reversed(ADDSUB)))
    with pytest.raises(InputError, match=r"AddSub.jsonl holds results for other data \(record 0"):
        run(model, tokenizer, data_dir, tmp_path / "out")


def run_two_ranks(model, tokenizer, data_dir, out) -> dict[int, dict]:
    """Ranks 0 and 1 of a data-parallel run, as two threads sharing a barrier; {rank: its results}."""
    barrier, failures, results = threading.Barrier(2, timeout=60), [], {}

    def rank(r):
        try:
            results[r] = run(model, tokenizer, data_dir, out, Shard(r, 2, barrier.wait), batch_size=2)
        except BaseException as error:  # surfaced below
            failures.append(error)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    return results


def test_two_ranks_score_disjoint_shards_and_rank0_merges(tiny, data_dir, tmp_path, monkeypatch):
    model, tokenizer, _ = tiny
    monkeypatch.setattr(batch_module, "generate_batch", scripted_responses([]))
    run(model, tokenizer, data_dir, tmp_path / "single")

    calls = []
    monkeypatch.setattr(batch_module, "generate_batch", scripted_responses(calls))
    run_two_ranks(model, tokenizer, data_dir, tmp_path / "parallel")
    assert sorted(calls) == [1, 1, 2, 2, 2, 2, 2]  # AddSub 4 + 3, boolq 3 + 2, in batches of 2
    assert sorted(p.name for p in (tmp_path / "parallel").iterdir()) == [
        "AddSub.jsonl", "boolq.jsonl", "run.json", "sibo_run.json", "summary.json",
    ]  # fmt: skip
    for name in ("AddSub.jsonl", "boolq.jsonl", "summary.json"):
        single = (tmp_path / "single" / name).read_text()
        parallel = (tmp_path / "parallel" / name).read_text()
        assert parallel == single.replace('"batch_size": 3', '"batch_size": 2')


def test_a_rank_writing_to_another_folder_is_refused_before_any_decoding(
    tiny, data_dir, tmp_path, monkeypatch
):
    model, tokenizer, _ = tiny
    monkeypatch.setattr(batch_module, "generate_batch", scripted_responses([]))
    barrier, failures = threading.Barrier(2, timeout=60), []

    def rank(r, out):  # two machines, each with its own --output_dir
        try:
            run(model, tokenizer, data_dir, out, Shard(r, 2, barrier.wait), batch_size=2)
        except BaseException as error:  # noqa: BLE001 - checked below
            failures.append(error)
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r, tmp_path / f"machine{r}")) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [str(error) for error in failures if isinstance(error, InputError)]
    assert refused == [
        f"AddSub: rank 1 of 2 does not write to {tmp_path / 'machine0'}: every rank of a data-parallel run "
        "must write to the same --output_dir (one folder they all reach)"
    ]
    # rank 0 refused before decoding (rank 1, alone in its folder, decodes until torchrun stops it)
    assert (tmp_path / "machine0" / "AddSub.rank0.jsonl").read_text() == ""


def test_every_rank_returns_rank0s_results(tiny, data_dir, tmp_path, monkeypatch):
    """Finetune's best checkpoint and early stopping read these on every rank: a rank seeing 0.0 while
    rank 0 sees the real accuracy would stop alone, and the other ranks would wait for it for ever."""
    model, tokenizer, _ = tiny
    monkeypatch.setattr(batch_module, "generate_batch", scripted_responses([]))
    results = run_two_ranks(model, tokenizer, data_dir, tmp_path / "parallel")
    assert {name: (r.n, r.correct) for name, r in results[1].items()} == {"AddSub": (7, 4), "boolq": (5, 5)}
    assert results[1] == results[0]


# -- end to end ---------------------------------------------------------------------------------


@pytest.mark.integration
def test_cli_end_to_end_on_a_boosted_adapter(tiny, data_dir, tmp_path, capsys):
    model, tokenizer, root = tiny
    out = tmp_path / "out"
    argv = ["evaluate", "--base_model", str(root / "base"), "--lora_weights", str(root / "adapter"),
            "--dataset", "AddSub,boolq", "--data_dir", str(data_dir), "--output_dir", str(out),
            "--num_beams", "1", "--max_new_tokens", "8", "--batch_size", "4", "--model", "LLaMA-7B"]  # fmt: skip
    assert sibo_main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["dataset", "n", "correct", "accuracy"]
    assert table[1].split()[:2] == ["AddSub", "7"] and table[2].split()[:2] == ["boolq", "5"]

    records = lines(out / "AddSub.jsonl")
    assert [r["index"] for r in records] == list(range(7))
    # the responses are the boosted model's own greedy continuations
    expected = generate_batch(
        model,
        tokenizer,
        [build_prompt(r["instruction"]) for r in ADDSUB[:4]],
        DecodingSettings(num_beams=1, max_new_tokens=8),
    )
    assert [r["output"] for r in records[:4]] == expected
    task, examples = load_benchmarks(EvalConfig("AddSub", data_dir, out))[0]
    assert [r["prediction"] for r in records] == [
        task.extract(r["output"], e) for r, e in zip(records, examples, strict=True)
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["datasets"]["boolq"]["n"] == 5
    assert summary["datasets"]["AddSub"]["correct"] == sum(r["correct"] for r in records)
    assert summary["run"]["weights_path"] == str(root / "adapter") and summary["run"]["model"] == "LLaMA-7B"
