"""scripts/train_reference.py end to end on a few steps of a tiny fixture corpus (what CI runs)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from ._scripts import load_script


tr = load_script("train_reference")

WORDS = ("the river runs past the old stone mill and the children watch the water while "
         "their mother sings of harvest and rain and the long road home").split()


def write_fixture_corpus(directory: Path, docs_per_split: int = 30, seed: int = 0) -> Path:
    """A small, deterministic JSONL corpus in prepare_corpus.py's format."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        with open(directory / f"{split}.jsonl", "w") as fh:
            for i in range(docs_per_split):
                sents = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 14))).capitalize() + "."
                         for _ in range(rng.randint(4, 10))]
                fh.write(json.dumps({"text": " ".join(sents), "source": "fixture", "id": f"{split}/{i}"}) + "\n")
    return directory


SMOKE = ["--preset", "tiny", "--vocab-size", "320", "--seq-len", "32", "--batch-size", "4",
         "--hidden-size", "32", "--intermediate-size", "64", "--num-hidden-layers", "2",
         "--num-attention-heads", "4", "--num-key-value-heads", "2", "--head-dim", "8",
         "--warmup-steps", "1", "--save-steps", "2", "--logging-steps", "1", "--val-blocks", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two steps, then a resumed run to four steps: the interrupted-run path of the real script."""
    tmp = tmp_path_factory.mktemp("train")
    corpus = write_fixture_corpus(tmp / "corpus")
    run = tmp / "run"
    assert tr.main([*SMOKE, "--corpus", str(corpus), "--run-dir", str(run), "--max-steps", "2"]) == 0
    first = json.loads((run / "final" / "provenance.json").read_text())
    assert tr.main([*SMOKE, "--corpus", str(corpus), "--run-dir", str(run), "--max-steps", "4",
                    "--save-dtype", "float16"]) == 0
    return run, first


def test_writes_a_standard_checkpoint_that_reloads_offline(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _ = trained
    final = run / "final"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "provenance.json"):
        assert (final / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    assert model.config.model_type == "llama"
    assert model.config.num_key_value_heads == 2 and model.config.num_attention_heads == 4
    assert model.dtype == torch.float16
    ids = tok("the river runs", return_tensors="pt")["input_ids"]
    assert tok.decode(ids[0]) == "the river runs"
    with torch.no_grad():
        assert torch.isfinite(model.float()(ids).logits).all()


def test_export_converts_a_finished_run(trained, tmp_path):
    run, _ = trained
    out = tmp_path / "exported"
    assert tr.main(["--export-from", str(run / "final"), "--out", str(out), "--save-dtype", "float32"]) == 0
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["exported"]["dtype"] == "float32" and prov["tokens_seen"] == 4 * 4 * 32
    assert _state(out)["model.norm.weight"].dtype == torch.float32


def test_resume_continues_from_the_checkpoint(trained):
    run, first = trained
    prov = json.loads((run / "final" / "provenance.json").read_text())
    assert first["tokens_seen"] == 2 * 4 * 32
    assert prov["tokens_seen"] == 4 * 4 * 32
    assert (run / "checkpoint-4").is_dir()
    assert first["resumed_from"] is None and prov["resumed_from"].endswith("checkpoint-2")
    assert prov["hyperparameters"]["max_steps"] == 4 and prov["corpus_train_sha256"]


def test_training_is_seeded(tmp_path):
    corpus = write_fixture_corpus(tmp_path / "corpus")
    weights = []
    for name in ("a", "b"):
        run = tmp_path / name
        assert tr.main([*SMOKE, "--corpus", str(corpus), "--run-dir", str(run), "--max-steps", "1",
                        "--save-steps", "100"]) == 0
        weights.append(_state(run / "final"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_qwen3_twin_builds_the_same_shapes(tmp_path):
    from transformers import AutoModelForCausalLM

    corpus = write_fixture_corpus(tmp_path / "corpus")
    run = tmp_path / "run"
    assert tr.main([*SMOKE, "--arch", "qwen3", "--corpus", str(corpus), "--run-dir", str(run),
                    "--max-steps", "1"]) == 0
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert model.config.model_type == "qwen3" and model.config.num_key_value_heads == 2


def test_missing_corpus_is_a_one_line_error(tmp_path):
    with pytest.raises(SystemExit, match="prepare_corpus.py"):
        tr.main(["--preset", "tiny", "--corpus", str(tmp_path / "nope"), "--run-dir", str(tmp_path / "r")])


def test_presets_fit_the_issue_budget():
    """Tiny default < 3 MB in fp16 and >= 2 KV groups/layer; reference has 8 KV groups, <= 12 MB in fp16."""
    for name, budget in (("tiny", 3e6), ("reference", 12e6)):
        p = tr.PRESETS[name]
        emb = p.vocab_size * p.hidden_size * (1 if p.tie_word_embeddings else 2)
        attn = p.hidden_size * p.head_dim * (2 * p.num_attention_heads + 2 * p.num_key_value_heads)
        mlp = 3 * p.hidden_size * p.intermediate_size
        params = emb + p.num_hidden_layers * (attn + mlp + 2 * p.hidden_size) + p.hidden_size
        assert 2 * params <= budget, (name, params)
        assert p.num_key_value_heads >= 2 and p.num_hidden_layers >= 2
    assert tr.PRESETS["reference"].num_key_value_heads == 8
