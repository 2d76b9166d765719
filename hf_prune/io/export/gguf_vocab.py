"""The tokenizer part of a GGUF file, read from a Hugging Face tokenizer directory with the ``gguf`` package.

Two kinds of tokenizer cover the supported families: byte-level BPE (Llama 3, Qwen2/3, SmolLM, Mistral
Nemo: llama.cpp's ``gpt2`` model) and SentencePiece-style BPE (Llama 2, Mistral 7B: its ``llama``
model). A byte-level BPE vocabulary also needs the name of its pre-tokenizer (``tokenizer.ggml.pre``):
llama.cpp splits text with a different regex for each, and the wrong one gives different token ids for
the same text — garbled output with nothing visibly wrong. llama.cpp's converter recognises the
pre-tokenizer by hashing the token ids of a fixed text; the same test is done here, for the
pre-tokenizers of the supported families (hashes from llama.cpp's ``conversion/base.py``, MIT licence).
An unrecognised one is written as ``default`` with a warning; ``--tokenizer-pre`` names it explicitly.
"""

from __future__ import annotations

import json
import logging
from hashlib import sha256
from pathlib import Path

import gguf

from ...errors import ConfigError

logger = logging.getLogger(__name__)

#: llama.cpp's probe text (conversion/base.py, get_vocab_base_pre)
PROBE_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 "
    "3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

#: sha256 of str(token ids of PROBE_TEXT) -> llama.cpp pre-tokenizer name
KNOWN_PRE_TOKENIZERS = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3(.1)
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2 / Qwen3
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen3-Embedding
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",  # SmolLM / SmolLM2
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",  # Mistral Nemo
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # GPT-2
}


def _is_byte_level(tokenizer_json: Path) -> bool:
    if not tokenizer_json.is_file():
        return False
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    parts = [spec.get("pre_tokenizer") or {}, spec.get("decoder") or {}]
    parts += [*parts[0].get("pretokenizers", []), *parts[1].get("decoders", [])]
    return spec.get("model", {}).get("type") == "BPE" and any(part.get("type") == "ByteLevel" for part in parts)


def detect_pre_tokenizer(tokenizer_dir: Path) -> str | None:
    """llama.cpp's name for this byte-level tokenizer's pre-tokenizer, or None when it is not one it knows.

    First by hash, as llama.cpp's converter does (SmolLM's tokenizer.json says plain ``ByteLevel`` but
    llama.cpp handles it as ``smollm``, with its own digit split and spacing); then a pre-tokenizer that is
    GPT-2's own (a lone ``ByteLevel`` with its built-in regex, as the embedded default model has) is ``gpt-2``.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    digest = sha256(str(tokenizer.encode(PROBE_TEXT, verbose=False)).encode()).hexdigest()
    if digest in KNOWN_PRE_TOKENIZERS:
        return KNOWN_PRE_TOKENIZERS[digest]
    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8")).get("pre_tokenizer") or {}
    if spec.get("type") == "ByteLevel" and spec.get("use_regex", True):
        return "gpt-2"
    return None


def add_vocabulary(writer: gguf.GGUFWriter, tokenizer_dir: Path, vocab_size: int, pre: str | None = None) -> str:
    """Write tokens, scores, types, merges and special tokens; returns the tokenizer kind written."""
    tokenizer_dir = Path(tokenizer_dir)
    if _is_byte_level(tokenizer_dir / "tokenizer.json"):
        vocab, model = gguf.BpeVocab(tokenizer_dir), "gpt2"
        if pre is None:
            pre = detect_pre_tokenizer(tokenizer_dir)
            if pre is None:
                pre = "default"
                logger.warning("the tokenizer's pre-tokenizer is not one hf-prune recognises; written as 'default' "
                               "(llama.cpp may split text differently): pass --tokenizer-pre NAME if you know it")
    elif (tokenizer_dir / "tokenizer.json").is_file() or (tokenizer_dir / "tokenizer.model").is_file():
        try:
            vocab, model = gguf.LlamaHfVocab(tokenizer_dir), "llama"
        except (TypeError, ValueError, FileNotFoundError) as error:
            raise ConfigError(f"{tokenizer_dir}: tokenizer not writable as GGUF ({error}); llama.cpp reads byte-level "
                              "BPE and SentencePiece-style (Llama 2) tokenizers") from error
    else:
        raise ConfigError(f"{tokenizer_dir} has no tokenizer.json or tokenizer.model; pass --tokenizer DIR")
    tokens, scores, types = [], [], []
    for text, score, token_type in vocab.all_tokens():
        tokens.append(text), scores.append(score), types.append(token_type)
    if len(tokens) > vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokens)} tokens but the model's embedding only {vocab_size}")
    for index in range(len(tokens), vocab_size):  # embedding rows without a token, as llama.cpp's converter writes them
        tokens.append(f"[PAD{index}]".encode()), scores.append(-1000.0), types.append(gguf.TokenType.UNUSED)
    writer.add_tokenizer_model(model)
    if model == "gpt2":
        writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    gguf.SpecialVocab(tokenizer_dir, load_merges=model == "gpt2", n_vocab=vocab_size).add_to_gguf(writer)
    return f"{model} ({pre})" if model == "gpt2" else model
