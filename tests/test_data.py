"""autopeft.data: reading and checking data files, tokenising, masking, splitting, packing, collating.

The tokenizers are real fast tokenizers (byte-level BPE) trained here on a few sentences: no Hub.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autopeft import data
from autopeft.data import FORMATS, make_collator, prepare_data, read_records, sample_prompts
from autopeft.errors import BadInputError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog", "hello world, this is a test of the tokenizer",
    "### Instruction: ### Input: ### Response: ### User: ### Assistant: ### System:",
    "what is two plus two? four. the answer is four.", "I love this film. I hate this film.",
]


def _build_tokenizer(chat_template: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<eos>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>")
    tokenizer.chat_template = chat_template
    return tokenizer


@pytest.fixture(scope="module")
def tok():
    return _build_tokenizer()


@pytest.fixture(scope="module")
def chat_tok():
    return _build_tokenizer(CHAT_TEMPLATE)


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _learned(tokenizer, example) -> str:
    """The text of the tokens that carry a loss."""
    return tokenizer.decode([label for label in example["labels"] if label != -100])


ALPACA = [{"instruction": f"Say hello {i} times", "input": "" if i % 2 else "politely", "output": f"hello x{i}"}
          for i in range(20)]


# ---------------------------------------------------------------------------------------------------------
# Format detection and normalisation


@pytest.mark.parametrize("records, fmt, first", [
    ([{"text": "a b c"}], "text", {"text": "a b c"}),
    ([{"prompt": "2+2=", "completion": "4"}], "prompt-completion", {"prompt": "2+2=", "completion": "4"}),
    ([{"question": "2+2?", "answer": "4"}], "prompt-completion", {"prompt": "2+2?", "completion": "4"}),
    ([{"instruction": "hi", "output": "yo"}], "alpaca", {"instruction": "hi", "input": "", "output": "yo"}),
    ([{"instruction": "hi", "input": None, "output": "yo"}], "alpaca",
     {"instruction": "hi", "input": "", "output": "yo"}),
    ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "x": 1}]}], "chat",
     {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
    ([{"text": "good", "label": "pos"}], "classification", {"text": "good", "label": "pos"}),
    ([{"sentence": "good", "label": 1, "id": 7}], "classification", {"text": "good", "label": 1}),
])
def test_formats_detected_and_normalised(tmp_path, records, fmt, first):
    got_fmt, got = read_records(write_jsonl(tmp_path / "d.jsonl", records * 2))
    assert got_fmt == fmt and fmt in FORMATS
    assert got == [first, first]


def test_tsv_aliases_sentence_and_content(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text('label\tsentence\n0\tit \'s a "dull" film\n\n1\ta joy\n10\tten\n')
    fmt, records = read_records(train)
    assert fmt == "classification"
    assert records == [{"text": 'it \'s a "dull" film', "label": 0}, {"text": "a joy", "label": 1},
                       {"text": "ten", "label": 10}]
    dev = tmp_path / "dev.tsv"
    dev.write_text("label\tcontent\n1\tfine\n")
    assert read_records(dev) == ("classification", [{"text": "fine", "label": 1}])


def test_csv_json_and_parquet(tmp_path):
    csv_file = tmp_path / "d.csv"
    csv_file.write_text('prompt,completion\n"multi\nline",x\nshort,y\n')
    assert read_records(csv_file) == ("prompt-completion", [{"prompt": "multi\nline", "completion": "x"},
                                                            {"prompt": "short", "completion": "y"}])
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([{"text": "a"}, {"text": "b"}], indent=2))
    assert read_records(listed) == ("text", [{"text": "a"}, {"text": "b"}])
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"version": "1", "data": [{"text": "a"}]}))
    assert read_records(wrapped) == ("text", [{"text": "a"}])
    lines_named_json = write_jsonl(tmp_path / "lines.json", [{"text": "a"}, {"text": "b"}])
    assert read_records(lines_named_json)[1] == [{"text": "a"}, {"text": "b"}]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"text": ["x", "y"], "label": [0, 1]}), tmp_path / "d.parquet")
    assert read_records(tmp_path / "d.parquet") == ("classification", [{"text": "x", "label": 0},
                                                                       {"text": "y", "label": 1}])


def test_unknown_extension_is_read_as_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "data.txt", [{"text": "a"}])
    assert read_records(path) == ("text", [{"text": "a"}])


def test_example_files_read_as_their_formats():
    assert read_records(EXAMPLES / "instructions.jsonl")[0] == "alpaca"
    assert read_records(EXAMPLES / "chat.jsonl")[0] == "chat"
    fmt, records = read_records(EXAMPLES / "sentiment.jsonl")
    assert fmt == "classification" and {r["label"] for r in records} == {"positive", "negative"}


@pytest.mark.skipif(not (SHARED_DATA / "gsm8k" / "train.jsonl").exists(), reason="shared data not present")
def test_shared_gsm8k_is_prompt_completion():
    fmt, records = read_records(SHARED_DATA / "gsm8k" / "train.jsonl")
    assert fmt == "prompt-completion" and len(records) == 7473


# ---------------------------------------------------------------------------------------------------------
# Bad inputs: one BadInputError naming file and line


def _bad(tmp_path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _lines(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


BAD = [
    ("empty file", "d.jsonl", b"", None, "empty"),
    ("only blank lines", "d.jsonl", "\n  \n\n", None, "empty"),
    ("not JSON", "d.jsonl", "hello there\n", 1, "not valid JSON"),
    ("broken line in the middle", "d.jsonl", _lines({"text": "a"}, "", {"text": "b"}, '{"text": "c"', {"text": "d"}), 4,
     "not valid JSON"),
    ("JSON that is not an object", "d.jsonl", _lines({"text": "a"}, [1, 2]), 2, "JSON object"),
    ("mixed formats", "d.jsonl", _lines({"instruction": "a", "output": "b"},
                                        {"messages": [{"role": "assistant", "content": "x"}]}), 2, "looks like chat"),
    ("missing field", "d.jsonl", _lines({"prompt": "a", "completion": "b"}, {"prompt": "c"}), 2, "'completion'"),
    ("wrong type", "d.jsonl", _lines({"text": "a"}, {"text": "b"}, {"text": 3}), 3, "'text' must be a string"),
    ("bool label", "d.jsonl", _lines({"text": "a", "label": True}), 1, "integer or a string"),
    ("inconsistent label types", "d.jsonl", _lines({"text": "a", "label": 1}, {"text": "b", "label": "1"}), 2,
     "one type"),
    ("non-UTF-8", "d.jsonl", b'{"text": "a"}\n{"text": "caf\xe9"}\n', 2, "UTF-8"),
    ("chat without an assistant turn", "d.jsonl", _lines({"messages": [{"role": "user", "content": "hi"}]}), 1,
     "no assistant"),
    ("chat with an unknown role", "d.jsonl",
     _lines({"messages": [{"role": "assistant", "content": "x"}]},
            {"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}), 2, "role"),
    ("chat messages not a list", "d.jsonl", _lines({"messages": "hi"}), 1, "non-empty list"),
    ("unknown keys", "d.jsonl", _lines({"foo": "a"}), 1, "cannot tell the data format"),
    ("lone surrogate", "d.jsonl", '{"text": "a\\ud800"}\n', 1, "surrogate"),
    ("too deeply nested", "d.jsonl", "[" * 100000 + "\n", 1, "not valid JSON"),
    ("bad .json document", "d.json", '[\n  {"text": "a"},\n  {"text": }\n]', 3, "not valid JSON"),
    ("item of .json list not an object", "d.json", '[\n  {"text": "a"},\n  "b"\n]', 3, "JSON object"),
    ("wrong type in .json list", "d.json", '[\n  {"text": "a"},\n\n  {"text": null}\n]', 4, "must be a string"),
    (".json scalar", "d.json", "42", 1, "list of records"),
    ("CSV row with too many fields", "d.csv", "text,label\na,1\nb,2,3\n", 3, "expected 2 fields"),
    ("CSV bad quoting", "d.csv", 'text,label\n"a"b,1\n', 2, "not valid CSV"),
    ("TSV header only", "d.tsv", "label\tsentence\n", 1, "no records"),
    ("TSV empty label", "d.tsv", "label\tsentence\npos\tgood\n\tbad\n", 3, "empty"),
    ("duplicate keys", "d.jsonl", '{"text": "a"}\n{"text": "b", "label": 1, "text": "c"}\n', 2, "duplicate key 'text'"),
    ("duplicate keys in a .json list", "d.json", '[\n  {"text": "a"},\n  {"label": 1, "label": 0, "text": "b"}\n]', 3,
     "duplicate key 'label'"),
    ("duplicate keys in a nested object", "d.jsonl",
     _lines({"messages": [{"role": "assistant", "content": "x"}]})
     + '{"messages": [{"role": "user", "role": "assistant", "content": "y"}]}\n', 2, "duplicate key 'role'"),
]


@pytest.mark.parametrize("name, filename, content, line, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_names_file_and_line(tmp_path, name, filename, content, line, words):
    path = _bad(tmp_path, filename, content)
    with pytest.raises(BadInputError) as info:
        read_records(path)
    assert info.value.source == str(path)
    assert info.value.line == line
    assert words in info.value.problem
    assert str(info.value).startswith(f"{path}:{line}: " if line else f"{path}: ")
    assert info.value.exit_code == 2


@pytest.mark.parametrize("name, filename, content, line, words", BAD, ids=[b[0] for b in BAD])
def test_train_on_bad_input_says_one_line_exits_2_and_writes_nothing(trainable_llama, tmp_path, name, filename,
                                                                     content, line, words):
    from click.testing import CliRunner

    from autopeft.cli import main

    path = _bad(tmp_path, filename, content)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", str(path), "-m", str(trainable_llama), "-o", str(out)])
    assert result.exit_code == 2
    (message,) = result.stderr.strip().splitlines()
    assert message.startswith(f"autopeft: error: {path}:{line}: " if line else f"autopeft: error: {path}: ")
    assert words in message and not out.exists()


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="directory"):
        read_records(tmp_path)
    with pytest.raises(BadInputError, match="no such file") as info:
        read_records(tmp_path / "nope.jsonl")
    assert info.value.source == str(tmp_path / "nope.jsonl")


def test_a_50_mb_line_is_refused_without_reading_it_as_a_record(tmp_path):
    path = _bad(tmp_path, "d.jsonl", b'{"text": "ok"}\n{"text": "' + b"a" * (50 * 2**20) + b'"}\n')
    with pytest.raises(BadInputError) as info:
        read_records(path)
    assert info.value.line == 2 and "a line of 52.4 MB" in info.value.problem


def test_an_unreadable_file_says_so(tmp_path):
    import os

    path = _bad(tmp_path, "d.jsonl", '{"text": "a"}\n')
    path.chmod(0)
    if os.access(path, os.R_OK):
        pytest.skip("running as root: permissions do not stop reading")
    with pytest.raises(BadInputError, match="cannot read the file: Permission denied"):
        read_records(path)


def test_corrupt_parquet(tmp_path):
    with pytest.raises(BadInputError, match="Parquet"):
        read_records(_bad(tmp_path, "d.parquet", b"not parquet at all"))


FUZZ_LINES = ['{"text": "a"}', '{"text": 1}', '{"label": 1}', '{"messages": []}', "[", '"\\udc00"',
              '{"text": "\\ud800"}', "label,text", "label\ttext", '1,"a', '[{"text": "a"}]']


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(st.text(max_size=30), st.sampled_from(FUZZ_LINES)), max_size=5)
    .map(lambda parts: "\n".join(parts).encode("utf-8", "surrogatepass")),
), suffix=st.sampled_from([".jsonl", ".jsonl", ".json", ".csv", ".tsv"]))
def test_any_bytes_read_or_bad_input(tmp_path, content, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    try:
        fmt, records = read_records(path)
    except BadInputError as exc:
        assert exc.source == str(path)
    else:
        assert fmt in FORMATS and records


# ---------------------------------------------------------------------------------------------------------
# Causal LM: masking, truncation, packing


def test_loss_only_on_the_response_without_template(tmp_path, tok):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA[:2])
    prepared = prepare_data(path, tok, validation_fraction=0)
    info = prepared.info
    assert (info.format, info.task, info.chat_template) == ("alpaca", "causal-lm", False)
    assert info.validation_source == "none"
    assert prepared.validation is None
    first = prepared.train[0]
    text = tok.decode(first["input_ids"])
    assert text == "### Instruction:\nSay hello 0 times\n\n### Input:\npolitely\n\n### Response:\nhello x0<eos>"
    assert _learned(tok, first) == "hello x0<eos>"
    assert first["labels"][0] == -100 and first["labels"][-1] == tok.eos_token_id
    assert "### Input" not in tok.decode(prepared.train[1]["input_ids"])  # empty input: no Input section
    assert set(prepared.train.column_names) == {"input_ids", "attention_mask", "labels", "length"}
    assert first["length"] == len(first["input_ids"]) == len(first["labels"])

    everything = prepare_data(path, tok, validation_fraction=0, train_on_inputs=True)
    assert everything.train[0]["labels"] == everything.train[0]["input_ids"]
    assert everything.info.train_on_inputs


def test_loss_only_on_the_response_with_template(tmp_path, chat_tok):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA[:1])
    prepared = prepare_data(path, chat_tok, validation_fraction=0)
    assert prepared.info.chat_template
    example = prepared.train[0]
    assert chat_tok.decode(example["input_ids"]) == (
        "<|im_start|>user\nSay hello 0 times\n\npolitely<|im_end|>\n<|im_start|>assistant\nhello x0<|im_end|>\n")
    assert _learned(chat_tok, example) == "hello x0<|im_end|>\n"
    full = prepare_data(path, chat_tok, validation_fraction=0, train_on_inputs=True).train[0]
    assert full["labels"] == full["input_ids"]


def test_multi_turn_chat_learns_the_last_assistant_turn(tmp_path, tok, chat_tok):
    record = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "two plus two?"},
                           {"role": "assistant", "content": "four"}, {"role": "user", "content": "sure?"},
                           {"role": "assistant", "content": "yes"}, {"role": "user", "content": "trailing"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [record])
    templated = prepare_data(path, chat_tok, validation_fraction=0).train[0]
    assert _learned(chat_tok, templated) == "yes<|im_end|>\n"
    assert "trailing" not in chat_tok.decode(templated["input_ids"])
    plain = prepare_data(path, tok, validation_fraction=0).train[0]
    assert tok.decode(plain["input_ids"]).startswith("### System:\nbe brief\n\n### User:\ntwo plus two?")
    assert _learned(tok, plain) == "yes<eos>"


def test_prompt_completion_and_text(tmp_path, tok):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "two plus two?", "answer": "four"},
                                              {"prompt": "the answer is ", "completion": "four"}])
    prepared = prepare_data(qa, tok, validation_fraction=0)
    assert tok.decode(prepared.train[0]["input_ids"]) == "two plus two?\nfour<eos>"  # newline only where needed
    assert tok.decode(prepared.train[1]["input_ids"]) == "the answer is four<eos>"
    # The prompt's trailing space merges into " four": a token holding response text is learned.
    assert [_learned(tok, prepared.train[i]) for i in range(2)] == ["four<eos>", " four<eos>"]
    text = prepare_data(write_jsonl(tmp_path / "t.jsonl", [{"text": "hello world"}]), tok, validation_fraction=0)
    assert text.train[0]["labels"] == text.train[0]["input_ids"]


def test_truncation_counts_and_drops_examples_with_nothing_to_learn(tmp_path, tok, caplog):
    records = [{"prompt": "the quick brown fox " * 10, "completion": "dog"},
               {"prompt": "hi ", "completion": "dog " * 30}, {"prompt": "hi ", "completion": "dog"}]
    path = write_jsonl(tmp_path / "p.jsonl", records)
    with caplog.at_level(logging.WARNING, logger="autopeft.data"):
        prepared = prepare_data(path, tok, validation_fraction=0, max_length=16)
    assert "dropped 1 of 3 training examples" in caplog.text
    assert prepared.info.num_train == len(prepared.train) == 2
    assert prepared.info.tokens.truncated == 2  # the long prompt (then dropped) and the long completion
    assert max(prepared.train["length"]) == 16
    with pytest.raises(BadInputError, match="max_length"):
        prepare_data(write_jsonl(tmp_path / "q.jsonl", records[:1]), tok, validation_fraction=0, max_length=16)


def test_packing_keeps_labels_and_fills_blocks(tmp_path, tok):
    path = EXAMPLES / "instructions.jsonl"
    plain = prepare_data(path, tok, validation_fraction=0.1, max_length=1024)
    packed = prepare_data(path, tok, validation_fraction=0.1, max_length=64, pack=True)
    assert plain.info.tokens.truncated == packed.info.tokens.truncated == 0  # packed examples are not cut
    assert packed.info.packed and packed.info.num_train == plain.info.num_train
    assert packed.info.tokens.max > 64
    lengths = packed.train["length"]
    assert all(n == 64 for n in lengths[:-1]) and 0 < lengths[-1] <= 64
    assert sum(lengths) <= sum(plain.train["length"])  # blocks of prompt text alone are left out
    count = lambda ds: sum(label != -100 for labels in ds["labels"] for label in labels)  # noqa: E731
    assert count(packed.train) == count(plain.train)
    assert sum(ids.count(tok.eos_token_id) for ids in packed.train["input_ids"]) == plain.info.num_train
    assert len(packed.validation) == packed.info.num_validation  # validation is never packed, only cut
    assert max(packed.validation["length"]) == 64 and min(packed.validation["length"]) < 64
    # the cost model plans a step for a packed block, not for the longest example before packing
    assert packed.longest_row() == 64 and plain.longest_row() == plain.info.tokens.max


# ---------------------------------------------------------------------------------------------------------
# Classification, splits, validation files


def _sentiment(n: int) -> list[dict]:
    return [{"text": f"film number {i} is {'great' if i % 3 else 'bad'}", "label": "pos" if i % 3 else "neg"}
            for i in range(n)]


def test_classification_labels(tmp_path, tok):
    path = write_jsonl(tmp_path / "s.jsonl", _sentiment(30))
    prepared = prepare_data(path, tok)
    assert prepared.info.task == "seq-cls" and prepared.info.labels == ["neg", "pos"]
    assert prepared.label2id == {"neg": 0, "pos": 1}
    assert set(prepared.train["labels"]) == {0, 1}
    assert prepared.train.column_names == ["input_ids", "attention_mask", "labels", "length"]
    ints = write_jsonl(tmp_path / "i.jsonl", [{"text": f"a{i}", "label": n} for i, n in enumerate((10, 2, 1, 2))])
    assert prepare_data(ints, tok, validation_fraction=0).label2id == {"1": 0, "2": 1, "10": 2}


def test_split_sizes_and_seed(tmp_path, tok, monkeypatch):
    path = write_jsonl(tmp_path / "s.jsonl", _sentiment(50))
    a = prepare_data(path, tok, validation_fraction=0.2, seed=1)
    assert (a.info.num_train, a.info.num_validation, a.info.validation_source) == (40, 10, "split")
    assert a.info.num_examples == 50
    again = prepare_data(path, tok, validation_fraction=0.2, seed=1)
    other = prepare_data(path, tok, validation_fraction=0.2, seed=2)
    assert again.validation["input_ids"] == a.validation["input_ids"]
    assert other.validation["input_ids"] != a.validation["input_ids"]
    tiny = prepare_data(path, tok, validation_fraction=0.001)
    assert tiny.info.num_validation == 1
    monkeypatch.setattr(data, "MAX_SPLIT_VALIDATION", 3)
    assert prepare_data(path, tok, validation_fraction=0.5).info.num_validation == 3
    one = prepare_data(write_jsonl(tmp_path / "one.jsonl", [{"text": "a single example"}]), tok)
    assert one.validation is None and one.info.num_validation == 0 and one.info.validation_source == "none"


def test_max_examples_samples_before_the_split(tmp_path, tok):
    path = write_jsonl(tmp_path / "s.jsonl", _sentiment(100))
    prepared = prepare_data(path, tok, max_examples=20, validation_fraction=0.1)
    assert (prepared.info.num_examples, prepared.info.num_train, prepared.info.num_validation) == (100, 18, 2)
    same = prepare_data(path, tok, max_examples=20, validation_fraction=0.1)
    assert same.train["input_ids"] == prepared.train["input_ids"]
    assert prepare_data(path, tok, max_examples=500).info.num_train == 90


def test_validation_file(tmp_path, tok):
    train = write_jsonl(tmp_path / "train.jsonl", _sentiment(10))
    good = write_jsonl(tmp_path / "dev.jsonl", _sentiment(4))
    prepared = prepare_data(train, tok, validation_path=good)
    assert (prepared.info.num_train, prepared.info.num_validation, prepared.info.validation_source) == (10, 4, "file")
    unseen = write_jsonl(tmp_path / "unseen.jsonl", _sentiment(2) + [{"text": "meh", "label": "neutral"}])
    with pytest.raises(BadInputError, match="'neutral' does not occur") as info:
        prepare_data(train, tok, validation_path=unseen)
    assert (info.value.source, info.value.line) == (str(unseen), 3)
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": "plain"}])
    with pytest.raises(BadInputError, match="validation file is text") as info:
        prepare_data(train, tok, validation_path=other)
    assert info.value.source == str(other)


def test_task_that_the_format_cannot_serve(tmp_path, tok):
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA[:3])
    with pytest.raises(BadInputError, match="detected format is alpaca"):
        prepare_data(path, tok, task="seq-cls")
    with pytest.raises(BadInputError, match="detected format is classification"):
        prepare_data(write_jsonl(tmp_path / "s.jsonl", _sentiment(3)), tok, task="causal-lm")
    with pytest.raises(BadInputError, match="packing"):
        prepare_data(write_jsonl(tmp_path / "s.jsonl", _sentiment(3)), tok, pack=True)
    with pytest.raises(BadInputError, match="task must be one of"):
        prepare_data(path, tok, task="translation")


def test_token_stats(tmp_path, tok):
    records = [{"text": "a " * n} for n in (1, 2, 3, 4, 30)]
    prepared = prepare_data(write_jsonl(tmp_path / "t.jsonl", records), tok, validation_fraction=0, max_length=20)
    lengths = sorted(prepared.train["length"])
    stats = prepared.info.tokens
    assert (stats.count, stats.total, stats.min, stats.max) == (5, sum(lengths), lengths[0], 20)
    assert stats.median == lengths[2] and stats.p95 == 20 and stats.truncated == 1
    assert stats.mean == pytest.approx(sum(lengths) / 5)


# ---------------------------------------------------------------------------------------------------------
# Collator and sample prompts


def test_causal_collator_pads_right(tok):
    features = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7], "length": 3},
                {"input_ids": [8], "attention_mask": [1], "labels": [8], "length": 1}]
    batch = make_collator("causal-lm", tok)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, tok.pad_token_id, tok.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]


def test_classification_collator_and_eos_padding(tmp_path, tok):
    prepared = prepare_data(write_jsonl(tmp_path / "s.jsonl", _sentiment(6)), tok, validation_fraction=0)
    batch = make_collator("seq-cls", tok)([prepared.train[i] for i in range(4)])
    assert batch["labels"].dtype.is_floating_point is False and batch["labels"].shape == (4,)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    no_pad = _build_tokenizer()
    no_pad.pad_token = None
    features = [{"input_ids": [3], "labels": [3]}, {"input_ids": [3, 4], "labels": [3, 4]}]
    padded = make_collator("causal-lm", no_pad)(features)
    assert padded["input_ids"].tolist()[0] == [3, no_pad.eos_token_id]


def test_sample_prompts(tmp_path, tok, chat_tok):
    assert sample_prompts(ALPACA, n=2) == ["Say hello 0 times\n\npolitely", "Say hello 1 times"]
    assert sample_prompts(ALPACA, n=1, tokenizer=tok) == [
        "### Instruction:\nSay hello 0 times\n\n### Input:\npolitely\n\n### Response:\n"]
    chat = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                          {"role": "user", "content": "and?"}]}]
    assert sample_prompts(chat) == [[{"role": "user", "content": "hi"}]]
    assert sample_prompts(chat, tokenizer=chat_tok) == ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"]
    words = " ".join(f"w{i}" for i in range(50))
    assert sample_prompts([{"text": words}]) == [" ".join(f"w{i}" for i in range(20))]
    assert sample_prompts(_sentiment(3)) == []
    assert len(sample_prompts(EXAMPLES / "chat.jsonl", n=3)) == 3
