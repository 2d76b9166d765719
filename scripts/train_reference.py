#!/usr/bin/env python
"""Train hf-prune's reference model (or the tiny embedded default model) from scratch, on CPU.

Pruning quality can only be judged on a model that has learned something, and no pretrained
checkpoint can be downloaded here, so this script builds one from the offline corpus written by
``scripts/prepare_corpus.py``:

1. a byte-level BPE tokenizer (``tokenizers``) trained on the *train* split only, saved as a
   ``transformers`` tokenizer;
2. a small ``LlamaForCausalLM`` with grouped-query attention, trained with the ``transformers``
   ``Trainer`` (seeded, progress bar with loss, checkpoints every ``--save-steps`` and automatic
   resume from the newest checkpoint in ``--run-dir``);
3. a standard HF checkpoint (``config.json``, ``model.safetensors``, tokenizer files,
   ``generation_config.json``) plus ``provenance.json`` (command, corpus hash, timings).

Presets (override any field with the flags below)::

    python scripts/train_reference.py                       # reference model -> runs/reference/final
    python scripts/train_reference.py --preset tiny         # tiny default    -> runs/tiny/final
    python scripts/train_reference.py --preset tiny --max-steps 5 --corpus tests_fixture_dir  # smoke

Train in fp32: bf16 matmuls on this class of CPU are ~25x slower.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class Preset:
    """Model + optimisation hyper-parameters; a frozen record so it can be written to provenance."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    seq_len: int
    batch_size: int
    learning_rate: float
    max_steps: int
    warmup_steps: int
    weight_decay: float = 0.1
    tie_word_embeddings: bool = True


PRESETS: dict[str, Preset] = {
    # ~5M parameters; 16 query heads / 8 KV heads (8 prunable KV groups per layer, like Llama-3-8B).
    # Tied embeddings keep the fp16 checkpoint under 12 MB. max_steps is sized for ~45 min on one
    # core of a shared 2-core machine (~0.9 epoch of the corpus).
    "reference": Preset(
        vocab_size=8192, hidden_size=256, num_hidden_layers=4, num_attention_heads=16,
        num_key_value_heads=8, head_dim=16, intermediate_size=688, seq_len=256, batch_size=16,
        learning_rate=2e-3, max_steps=1800, warmup_steps=60,
    ),
    # ~1.2M parameters (< 3 MB in fp16): the default model embedded in the package.
    "tiny": Preset(
        vocab_size=4096, hidden_size=128, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, head_dim=16, intermediate_size=344, seq_len=256, batch_size=16,
        learning_rate=3e-3, max_steps=700, warmup_steps=30,
    ),
}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def iter_texts(path: Path):
    """Yield the ``text`` field of each JSONL document (the corpus format of prepare_corpus.py)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)["text"]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_tokenizer(train_file: Path, vocab_size: int, seq_len: int, out_dir: Path):
    """Train a byte-level BPE on the train split and wrap it as a ``PreTrainedTokenizerFast``.

    Byte-level BPE never produces unknown tokens, so any text (and lm-eval's byte perplexity)
    is well defined. ``<|endoftext|>`` serves as BOS/EOS/PAD, separating documents in training
    and acting as lm-eval's rolling-loglikelihood prefix token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(train_file), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, pad_token=EOS, model_max_length=seq_len
    )
    hf_tok.save_pretrained(out_dir)
    return hf_tok


def tokenize_split(tokenizer, path: Path, cache: Path) -> np.ndarray:
    """Token ids of a whole split, documents joined by EOS; cached as ``.npy`` for resumes."""
    if cache.exists():
        return np.load(cache)
    ids: list[int] = []
    batch: list[str] = []
    eos = tokenizer.eos_token_id

    def flush() -> None:
        for row in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            ids.append(eos)
        batch.clear()

    for text in iter_texts(path):
        batch.append(text)
        if len(batch) == 256:
            flush()
    flush()
    arr = np.asarray(ids, dtype=np.uint16 if tokenizer.vocab_size <= 65535 else np.int32)
    np.save(cache, arr)
    return arr


class BlockDataset(torch.utils.data.Dataset):
    """Non-overlapping ``seq_len`` windows of a token stream; labels = inputs (the model shifts)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, limit: int | None = None):
        self.tokens = tokens
        self.seq_len = seq_len
        n = len(tokens) // seq_len
        self.n = n if limit is None else min(n, limit)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(self.tokens[i * self.seq_len : (i + 1) * self.seq_len].astype(np.int64))
        return {"input_ids": x, "labels": x.clone()}


# --------------------------------------------------------------------------------------------
# Model and training
# --------------------------------------------------------------------------------------------


def build_model(p: Preset, tokenizer, seed: int, arch: str = "llama"):
    """A freshly initialised causal LM for preset ``p`` (GQA, RoPE, RMSNorm, SwiGLU).

    ``arch="qwen3"`` builds the same shapes as a ``Qwen3ForCausalLM`` (adds per-head q/k norms),
    a twin for checking that pruning behaves alike across the two families.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=p.hidden_size,
        intermediate_size=p.intermediate_size,
        num_hidden_layers=p.num_hidden_layers,
        num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_key_value_heads,
        head_dim=p.head_dim,
        max_position_embeddings=p.seq_len,
        tie_word_embeddings=p.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return model_cls(config)


def latest_checkpoint(run_dir: Path) -> str | None:
    """Newest ``checkpoint-N`` folder in ``run_dir`` (what an interrupted run resumes from)."""
    ckpts = sorted(run_dir.glob("checkpoint-*"), key=lambda d: int(d.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def make_trainer(model, p: Preset, args: argparse.Namespace, train_ds, eval_ds):
    """A seeded CPU ``Trainer`` with cosine schedule, logging loss to the tqdm bar."""
    from transformers import Trainer, TrainingArguments, default_data_collator

    targs = TrainingArguments(
        output_dir=str(args.run_dir),
        per_device_train_batch_size=p.batch_size,
        per_device_eval_batch_size=p.batch_size,
        max_steps=p.max_steps,
        learning_rate=p.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=p.warmup_steps,
        weight_decay=p.weight_decay,
        adam_beta2=0.95,
        max_grad_norm=1.0,
        logging_steps=args.logging_steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=2,
        eval_strategy="no",
        seed=args.seed,
        data_seed=args.seed,
        use_cpu=True,
        dataloader_num_workers=0,
        report_to=[],
        disable_tqdm=False,
    )
    return Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=eval_ds,
                   data_collator=default_data_collator)


def save_final(model, tokenizer, out_dir: Path, dtype: str) -> None:
    """Write a plain HF checkpoint that reloads with ``from_pretrained`` (fp16 for the shipped copies)."""
    from transformers import GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    if dtype == "float16":
        model = model.to(torch.float16)
    model.config.use_cache = True
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # No max_length: every generate(max_new_tokens=...) would warn that both are set.
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out_dir)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Preset]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="reference")
    ap.add_argument("--corpus", type=Path, default=Path(os.environ.get("HF_PRUNE_CORPUS", "data/corpus")))
    ap.add_argument("--run-dir", type=Path, help="checkpoints/logs (default runs/<preset>)")
    ap.add_argument("--out", type=Path, help="final checkpoint (default <run-dir>/final)")
    ap.add_argument("--save-dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--arch", choices=["llama", "qwen3"], default="llama", help="model family of the twin")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    ap.add_argument("--logging-steps", type=int, default=10)
    ap.add_argument("--save-steps", type=int, default=100)
    ap.add_argument("--val-blocks", type=int, default=256, help="validation windows for the final val ppl")
    ap.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in --run-dir")
    ap.add_argument("--export-from", type=Path, default=None,
                    help="no training: re-save this finished checkpoint to --out in --save-dtype")
    for f in fields(Preset):  # every preset field can be overridden: --max-steps 5, --hidden-size 64 ...
        kind = {"bool": lambda s: s.lower() in ("1", "true", "yes")}.get(str(f.type), None)
        ap.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None,
                        type=kind or (float if f.type in (float, "float") else int))
    args = ap.parse_args(argv)
    preset = replace(PRESETS[args.preset], **{f.name: getattr(args, f.name) for f in fields(Preset)
                                               if getattr(args, f.name) is not None})
    args.run_dir = args.run_dir or Path("runs") / args.preset
    args.out = args.out or args.run_dir / "final"
    return args, preset


def export_checkpoint(src: Path, out: Path, dtype: str) -> None:
    """Re-save a finished run (e.g. the fp32 reference -> the fp16 copy in eval/reference).

    Keeps the run's provenance and records the conversion, so the committed copy says exactly
    which training command and corpus produced it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    save_final(model, AutoTokenizer.from_pretrained(src), out, dtype)
    prov_file = src / "provenance.json"
    prov = json.loads(prov_file.read_text()) if prov_file.exists() else {}
    prov["exported"] = {"from": str(src), "dtype": dtype}
    (out / "provenance.json").write_text(json.dumps(prov, indent=2) + "\n")
    print(f"exported {src} -> {out} ({dtype})")


def check_corpus(corpus: Path) -> tuple[Path, Path]:
    train, val = corpus / "train.jsonl", corpus / "validation.jsonl"
    for f in (train, val):
        if not f.exists():
            raise SystemExit(f"error: {f} not found; run `python scripts/prepare_corpus.py` first")
    return train, val


def main(argv: list[str] | None = None) -> int:
    args, p = parse_args(argv)
    if args.export_from:
        export_checkpoint(args.export_from, args.out, args.save_dtype)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    train_file, val_file = check_corpus(args.corpus)
    args.run_dir.mkdir(parents=True, exist_ok=True)

    from transformers import AutoTokenizer, set_seed

    set_seed(args.seed)
    tok_dir = args.run_dir / "tokenizer"
    if (tok_dir / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    else:
        t0 = time.time()
        tokenizer = train_tokenizer(train_file, p.vocab_size, p.seq_len, tok_dir)
        print(f"tokenizer: vocab {len(tokenizer)} trained in {time.time() - t0:.0f}s", flush=True)
    train_tokens = tokenize_split(tokenizer, train_file, args.run_dir / "train_tokens.npy")
    val_tokens = tokenize_split(tokenizer, val_file, args.run_dir / "val_tokens.npy")
    train_ds = BlockDataset(train_tokens, p.seq_len)
    val_ds = BlockDataset(val_tokens, p.seq_len, limit=args.val_blocks)
    model = build_model(p, tokenizer, args.seed, args.arch)
    n_params = sum(t.numel() for t in model.parameters())
    print(f"model: {n_params:,} parameters; train {len(train_tokens):,} tokens ({len(train_ds):,} windows), "
          f"{p.max_steps * p.batch_size * p.seq_len:,} tokens to see", flush=True)

    trainer = make_trainer(model, p, args, train_ds, val_ds)
    resume = None if args.no_resume else latest_checkpoint(args.run_dir)
    if resume:
        print(f"resuming from {resume}", flush=True)
    t0 = time.time()
    out = trainer.train(resume_from_checkpoint=resume)
    wall = time.time() - t0
    val_loss = trainer.evaluate()["eval_loss"]
    save_final(trainer.model, tokenizer, args.out, args.save_dtype)

    steps_run = out.global_step - (int(resume.split("-")[-1]) if resume else 0)
    provenance = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "preset": args.preset,
        "arch": args.arch,
        "hyperparameters": asdict(p),
        "seed": args.seed,
        "resumed_from": resume,
        "parameters": n_params,
        "corpus_train_sha256": file_sha256(train_file),
        "corpus_manifest_sha256": json.loads((args.corpus / "manifest.json").read_text()).get("sha256")
        if (args.corpus / "manifest.json").exists() else None,
        "train_tokens_available": int(len(train_tokens)),
        "tokens_seen": int(out.global_step * p.batch_size * p.seq_len),
        "train_wall_seconds_this_session": round(wall, 1),
        "tokens_per_second_this_session": round(steps_run * p.batch_size * p.seq_len / wall, 1),
        "val_loss": val_loss,
        "val_perplexity": math.exp(val_loss),
        "val_tokens": len(val_ds) * p.seq_len,
        "torch_threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    (args.out / "provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    print(json.dumps({k: provenance[k] for k in ("parameters", "tokens_seen", "train_wall_seconds_this_session",
                                                  "tokens_per_second_this_session", "val_perplexity")}))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
