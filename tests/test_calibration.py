import pytest
import torch

from hf_prune.calibration.rows import load_calibration
from hf_prune.corpus import TextSource
from hf_prune.errors import ConfigError
from hf_prune.testing import make_tiny_tokenizer, write_calibration_file


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


def test_jsonl_gives_fixed_length_rows_without_padding(tmp_path, tokenizer):
    path = write_calibration_file(tmp_path / "calib.jsonl")
    rows = load_calibration(TextSource(path), tokenizer, samples=4, seq_len=32, seed=0)
    assert rows.shape == (4, 32) and rows.dtype == torch.long
    assert tokenizer.pad_token_id is None or not (rows == tokenizer.pad_token_id).any()
    assert (rows == tokenizer.eos_token_id).any(), "documents are separated by EOS"


def test_same_seed_same_rows_other_seed_other_rows(tmp_path, tokenizer):
    path = write_calibration_file(tmp_path / "calib.jsonl")
    first = load_calibration(TextSource(path), tokenizer, samples=4, seq_len=32, seed=0)
    again = load_calibration(TextSource(path), tokenizer, samples=4, seq_len=32, seed=0)
    other = load_calibration(TextSource(path), tokenizer, samples=4, seq_len=32, seed=1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_plain_text_file(tmp_path, tokenizer):
    path = tmp_path / "calib.txt"
    path.write_text("The quick brown fox jumps over the lazy dog.\n" * 50)
    rows = load_calibration(TextSource(str(path)), tokenizer, samples=2, seq_len=16, seed=0)
    assert rows.shape == (2, 16)


def test_too_short_source_is_a_clear_error(tmp_path, tokenizer):
    path = tmp_path / "short.txt"
    path.write_text("Just a few words.\n")
    with pytest.raises(ConfigError, match="too short.*lower --calibration-samples"):
        load_calibration(TextSource(str(path)), tokenizer, samples=8, seq_len=64, seed=0)


def test_empty_source_is_a_clear_error(tmp_path, tokenizer):
    path = tmp_path / "empty.jsonl"
    path.write_text('{"text": ""}\n{"text": "   "}\n')
    with pytest.raises(ConfigError, match="contains no text"):
        load_calibration(TextSource(str(path)), tokenizer, samples=1, seq_len=8, seed=0)


def test_missing_file_and_missing_column(tmp_path, tokenizer):
    with pytest.raises(ConfigError, match="does not exist"):
        load_calibration(TextSource(str(tmp_path / "nope.jsonl")), tokenizer, samples=1, seq_len=8, seed=0)
    path = tmp_path / "other.jsonl"
    path.write_text('{"body": "hello world"}\n')
    with pytest.raises(ConfigError, match="no column 'text'.*--calibration-column"):
        load_calibration(TextSource(str(path)), tokenizer, samples=1, seq_len=8, seed=0)
    rows = load_calibration(TextSource(str(path), column="body"), tokenizer, samples=1, seq_len=2, seed=0)
    assert rows.shape == (1, 2)


def test_reference_corpus_missing_names_the_script(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("HF_PRUNE_CORPUS", str(tmp_path / "no-corpus"))
    with pytest.raises(ConfigError, match="prepare_corpus.py"):
        load_calibration(TextSource("reference"), tokenizer, samples=1, seq_len=8, seed=0)
