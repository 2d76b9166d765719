"""Tiny random models of every supported family, built from configs as transformers' own tests do.

Used by the test-suite and by ``eval/mask_vs_surgery.py``. One model per entry of
:data:`hf_prune.adapters.FAMILIES`, so a new family is tested by every family-parametrised test as soon as it is
registered. Shapes are chosen so that every code path is exercised: GQA with 4 KV groups of 2 query heads, and
what each family's entry sets for its own paths (``Family.tiny_config``: biases everywhere, a sliding window,
head_dim different from hidden/heads, tied embeddings). They say nothing about quality: for that, see eval/.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from .adapters import FAMILIES, get_adapter

TINY_SHAPES = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=3,
    num_attention_heads=8,
    num_key_value_heads=4,
    max_position_embeddings=256,
)



def families() -> list[str]:
    """The model_type of every supported family, in order."""
    return sorted(FAMILIES)


def make_tiny_model(family: str, attn_implementation: str = "eager", seed: int = 0, **overrides) -> PreTrainedModel:
    """A tiny random causal LM of ``family`` in float32, eval mode.

    Weights are re-drawn with a larger std than the default init so that pruning visibly changes
    the logits: a comparison of two pruned models must not pass merely because every logit is ~0.
    """
    config = AutoConfig.for_model(family, **{**TINY_SHAPES, **FAMILIES[family].tiny_config, **overrides})
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0.0, 0.2)
    return model.eval()


def random_plan(model: PreTrainedModel, seed: int = 0) -> dict[str, list[int]]:
    """A plan with different kept counts in every scope (1 .. all) and random kept indices."""
    generator = torch.Generator().manual_seed(seed)
    plan = {}
    for scope in get_adapter(model).scopes(model):
        keep = int(torch.randint(1, scope.num_groups + 1, (1,), generator=generator))
        plan[scope.name] = sorted(torch.randperm(scope.num_groups, generator=generator)[:keep].tolist())
    return plan


SAMPLE_TEXT = (
    "The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step. "
    "All that glitters is not gold. Where there is a will there is a way. Actions speak louder than words. "
    "Knowledge is power, and time is money. The early bird catches the worm, but the second mouse gets the cheese. "
)


def make_tiny_tokenizer(vocab_size: int = 200, text: str = SAMPLE_TEXT, byte_level: bool = False):
    """A word-piece BPE tokenizer trained on ``text``, whose ids fit the tiny models' vocabulary.

    ``byte_level`` gives a GPT-2 style byte-level BPE instead (the kind Llama 3 and Qwen use, and the one
    llama.cpp's ``gpt2`` tokenizer reads): its 256 byte tokens come first, so ``vocab_size`` must exceed
    258 and the model's vocabulary must be at least as large. Built with the ``tokenizers`` library,
    offline, in well under a second.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None if byte_level else "<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False) if byte_level else pre_tokenizers.Whitespace()
    extra = {"initial_alphabet": pre_tokenizers.ByteLevel.alphabet()} if byte_level else {}
    if byte_level:
        tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<eos>"], show_progress=False, **extra)
    tokenizer.train_from_iterator([text] * 4, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>")


def write_calibration_file(path, documents: int = 40) -> str:
    """A small .jsonl calibration file (one JSON object with a "text" field per line)."""
    import json
    import random

    sentences = [s.strip() + "." for s in SAMPLE_TEXT.split(".") if s.strip()]
    rng = random.Random(0)
    with open(path, "w") as handle:
        for _ in range(documents):
            handle.write(json.dumps({"text": " ".join(rng.choices(sentences, k=12))}) + "\n")
    return str(path)


def save_tiny_checkpoint(family: str, directory, **overrides) -> str:
    """A tiny random model of ``family`` plus a tokenizer, saved as a local checkpoint directory."""
    make_tiny_model(family, **overrides).save_pretrained(directory)
    make_tiny_tokenizer().save_pretrained(directory)
    return str(directory)
