"""hf_prune.quality / hf-prune eval: lm-eval agrees with a plain torch loop; paired helpers; errors."""

from __future__ import annotations

import importlib.util
import json
import math
import random
import re
import sys
from pathlib import Path

import pytest
import torch

from hf_prune import quality as ev
from hf_prune.corpus import MissingCorpusError, load_documents
from hf_prune.data import DEFAULT_MODEL_DIR
from hf_prune.run.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
WORDS = ("the river runs past the old stone mill and the children watch the water while their mother "
         "sings of harvest and rain and the long road home before the winter comes").split()


def _fixture_docs(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + rng.choice(".!?")
                 for _ in range(rng.randint(6, 14))]
        docs.append(" ".join(sents))
    return docs


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    _write_jsonl(d / "train.jsonl", _fixture_docs(40, 0))
    _write_jsonl(d / "validation.jsonl", _fixture_docs(5, 1))
    _write_jsonl(d / "test.jsonl", _fixture_docs(12, 2))
    return d


@pytest.fixture(scope="module")
def toy(corpus, tmp_path_factory):
    """A random 2-layer GQA Llama with a 32-token context (so documents need several rolling windows)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = importlib.util.spec_from_file_location("train_reference", ROOT / "scripts" / "train_reference.py")
    tr = importlib.util.module_from_spec(spec)
    sys.modules["train_reference"] = tr
    spec.loader.exec_module(tr)
    tok = tr.train_tokenizer(corpus / "train.jsonl", 300, 32, tmp_path_factory.mktemp("tok"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=32,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def test_lm_eval_perplexity_matches_a_plain_torch_loop(toy, corpus):
    model, tok = toy
    res = ev.evaluate(model, tok, test_file=corpus / "test.jsonl", tasks=[ev.PERPLEXITY_TASK], batch_size=4)
    docs = load_documents(corpus / "test.jsonl")
    scored = [ev.rolling_loglikelihood(model, tok, d) for d in docs]
    total_ll = sum(ll for ll, _ in scored)
    n_tokens = sum(n for _, n in scored)
    assert n_tokens > 3 * 32 * len(docs) / 2  # documents really span several windows
    assert res["num_tokens"] == n_tokens and res["num_docs"] == len(docs)
    assert res["token_perplexity"] == pytest.approx(math.exp(-total_ll / n_tokens), rel=1e-3)
    n_bytes = sum(len(d.encode()) for d in docs)
    assert res["byte_perplexity"] == pytest.approx(math.exp(-total_ll / n_bytes), rel=1e-3)
    n_words = sum(len(re.split(r"\s+", d)) for d in docs)
    assert res["word_perplexity"] == pytest.approx(math.exp(-total_ll / n_words), rel=1e-3)


def test_next_sentence_task_runs_offline_and_leaves_global_rng_alone(toy, corpus):
    model, tok = toy
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    res = ev.evaluate(model, tok, test_file=corpus, tasks=[ev.NEXT_SENTENCE_TASK], mc_items=12, batch_size=8)
    assert torch.equal(torch.rand(3), expected)
    assert res["next_sentence_items"] == 12
    assert 0.0 <= res["next_sentence_acc"] <= 1.0 and 0.0 <= res["next_sentence_acc_norm"] <= 1.0


def test_next_sentence_items_are_deterministic_and_well_formed():
    docs = _fixture_docs(10, 3)
    a = ev.build_next_sentence_items(docs, num_items=25, seed=7)
    assert a == ev.build_next_sentence_items(docs, num_items=25, seed=7)
    assert a != ev.build_next_sentence_items(docs, num_items=25, seed=8)
    for item in a:
        assert len(item["choices"]) == 4 and len(set(item["choices"])) == 4
        answer = item["choices"][item["label"]]
        doc = next(d for d in docs if item["context"] in d)
        assert doc.index(item["context"]) < doc.index(answer)


def test_fixed_token_set_is_seeded_and_paired_helpers_agree(toy, corpus):
    model, tok = toy
    a = ev.fixed_token_set(tok, corpus, num_windows=6, seq_len=16, seed=0)
    assert a.shape == (6, 16) and torch.equal(a, ev.fixed_token_set(tok, corpus, num_windows=6, seq_len=16, seed=0))
    assert not torch.equal(a, ev.fixed_token_set(tok, corpus, num_windows=6, seq_len=16, seed=1))
    with torch.no_grad():
        loss = model(input_ids=a, labels=a).loss
    assert ev.paired_perplexity(model, token_set=a, batch_size=4) == pytest.approx(math.exp(loss), rel=1e-5)
    same = ev.paired_comparison(model, model, a)
    assert same["delta_pct"] == 0.0 and same["delta_nll"] == 0.0


def test_token_set_roundtrip(tmp_path, toy, corpus):
    _, tok = toy
    a = ev.fixed_token_set(tok, corpus, num_windows=4, seq_len=16)
    ev.save_token_set(a, tmp_path / "set.safetensors", seed=0, source="fixture")
    assert torch.equal(ev.load_token_set(tmp_path / "set.safetensors"), a)


def test_unigram_baseline_is_finite(toy, corpus):
    _, tok = toy
    ppl = ev.unigram_perplexity(tok, corpus, corpus)
    assert 1.0 < ppl < len(tok)


def test_missing_corpus_names_the_file_and_the_fix(tmp_path, monkeypatch, toy):
    monkeypatch.setenv("HF_PRUNE_CORPUS", str(tmp_path / "empty"))
    with pytest.raises(MissingCorpusError, match=r"empty/test\.jsonl.*prepare_corpus\.py"):
        ev.evaluate(*toy)


def test_cli_prints_metrics_and_fails_cleanly(tmp_path, toy, corpus, capsys):
    model, tok = toy
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    out = tmp_path / "metrics.json"
    rc = cli_main(["eval", "--model", str(tmp_path / "m"), "--eval-data", str(corpus / "test.jsonl"),
                        "--eval-tasks", ev.PERPLEXITY_TASK, "--eval-limit", "3", "--json-out", str(out),
                        "--device-map", "cpu", "--dtype", "float32", "--eval-batch-size", "2"])
    assert rc == 0
    assert "token_perplexity" in capsys.readouterr().out
    assert json.loads(out.read_text())["metrics"]["num_docs"] == 3

    assert cli_main(["eval", "--model", "no-such-owner/no-such-model", "--eval-tasks", ev.PERPLEXITY_TASK,
                          "--eval-data", str(corpus)]) == 2  # a Hub id, and the Hub is offline here
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no-such-owner/no-such-model" in err
    assert cli_main(["eval", "--model", str(tmp_path / "m"), "--eval-tasks", "no_such_task", "--eval-data", str(corpus)]) == 2
    assert "unknown lm-eval task(s): no_such_task" in capsys.readouterr().err
    assert cli_main(["eval", "--model", str(tmp_path / "missing"), "--eval-data", str(corpus)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err
    assert cli_main(["eval", "--model", str(tmp_path / "m"), "--eval-data", str(tmp_path / "no.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prepare_corpus.py" in err


def test_embedded_default_model_loads_offline_and_is_small():
    """The package's default model: standard Auto classes, <= 3 MB of weights, prunable GQA shape."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = DEFAULT_MODEL_DIR
    assert (d / "model.safetensors").stat().st_size <= 3_000_000
    model = AutoModelForCausalLM.from_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    cfg = model.config
    assert cfg.num_hidden_layers >= 2 and cfg.num_key_value_heads >= 2
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0
    ids = tok("In the beginning", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.isfinite(model.float()(ids).logits).all()
