"""The model card of a pruned checkpoint, written with ``huggingface_hub.ModelCard`` / ``ModelCardData``.

It is built from a :class:`~hf_prune.report.PruningReport` alone, and the report is stored in the
model's ``config.hf_prune``, so ``model.push_to_hub`` on a pruned model loaded back from disk writes the
same card as the run that made it.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from ..quality.retention import retention_markdown
from ..report import PruningReport
from .summary import run_options, summary_lines


def hub_id_or_none(name: str | None) -> str | None:
    """``name`` when it reads as a Hub model id (``owner/name``), not a local path: only a Hub id may go in
    the card's ``base_model`` metadata, which the Hub links to."""
    if not name or name.startswith((".", "/", "~")) or Path(name).expanduser().exists():
        return None
    parts = name.split("/")
    return name if len(parts) == 2 and all(parts) else None


def _quality_section(report: PruningReport) -> str:
    quality = report.quality
    if not quality.get("rows"):
        return ""
    text = retention_markdown(quality)
    gate = quality.get("min_retention")
    if gate is not None:
        verdict = "passed" if quality["passed"] else "**failed** (a model below the gate is not pushed)"
        text += f"\n\nQuality gate: every task must retain at least {gate:.0%} — {verdict}; lowest retention {quality['lowest']:.3f}."
    where = f" on `{quality['heldout']}`" if quality.get("heldout") else ""
    return (f"## Quality (lm-eval)\n\nScored with `lm_eval.simple_evaluate`{where}. Retention is pruned / dense "
            f"(dense / pruned where lower is better), so 1.0 means nothing was lost.\n\n{text}\n")


def _recovery_section(report: PruningReport) -> str:
    recovery = report.recovery
    if not recovery:
        return ""
    options = report.config.get("recovery", {})
    if recovery.get("method") == "distill":
        return _distillation_section(recovery, options)
    fate = ("merged into the weights, so this is a plain checkpoint" if recovery.get("kept", True) else
            "discarded, because it did not lower the perplexity of the held-out rows")
    return (f"## Recovery\n\nA LoRA (peft; rank {options.get('rank')}, {recovery['steps']} steps, lr "
            f"{options.get('lr')}, modules `{options.get('target_modules')}`) was trained on `{recovery['data']}` "
            f"({recovery['train_tokens']:,} tokens) and {fate}. "
            f"Perplexity on {recovery['eval_rows']} held-out rows of that text: {recovery['perplexity_dense']:.3f} "
            f"dense, {recovery['perplexity_before']:.3f} after the cut, {recovery['perplexity_after']:.3f} after "
            "recovery.\n")


def _distillation_section(recovery: dict, options: dict) -> str:
    terms = [(options.get("kl_weight", 1.0), "KL divergence of the next-token distributions (temperature "
                                             f"{options.get('temperature', 1.0)})"),
             (options.get("lm_weight", 0.0), "the language-modelling loss"),
             (options.get("hidden_weight", 0.0), "the last hidden states' relative squared error")]
    loss = " + ".join(name if weight == 1 else f"{weight} x {name}" for weight, name in terms if weight)
    student = ("every remaining weight" if options.get("params", "full") == "full" else
               f"a LoRA (rank {options.get('rank')}, merged into the weights)")
    kl = (f" KL to the dense model: {recovery['kl_before']:.4f} after the cut, {recovery['kl_after']:.4f} after "
          "recovery (nats per token)." if recovery.get("kl_before") is not None else "")
    return (f"## Recovery\n\nDistilled from the dense model ({loss}), training {student} on `{recovery['data']}`: "
            f"{recovery['train_tokens']:,} tokens in {recovery['steps']} steps. On {recovery['eval_rows']} held-out "
            f"rows of that text (never trained on), perplexity {recovery['perplexity_dense']:.3f} dense, "
            f"{recovery['perplexity_before']:.3f} after the cut, {recovery['perplexity_after']:.3f} after "
            f"recovery.{kl}\n\n![recovery curve](recovery_curve.png)\n")


LOAD_PRUNED = """## Load

```python
import hf_prune  # registers the pruned classes
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{where}")
# without hf_prune installed (the tokenizer reads the config too):
model = AutoModelForCausalLM.from_pretrained("{where}", trust_remote_code=True)
tokenizer = AutoTokenizer.from_pretrained("{where}", trust_remote_code=True)
```

"""
SERVE_PRUNED = """## Serve

llama.cpp (per-layer shapes kept; f32 reproduces the PyTorch logits, quantized types are smaller):

```bash
hf-prune export-gguf {where} model.gguf --dtype q8_0
llama-cli -m model.gguf -p "Hello"        # or llama_cpp.Llama(model_path="model.gguf")
```

vLLM (with hf-prune installed beside it, its plugin registers the pruned architectures):

```bash
vllm serve {where}                         # or vllm.LLM("{where}")
```

"""
LOAD_STOCK = """## Load

A stock checkpoint of the base model's family (equal counts in every layer, saved with `--uniform-shapes`):
any tool that reads that family loads it, without hf-prune and without remote code.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("{where}")
tokenizer = AutoTokenizer.from_pretrained("{where}")
```

Serving engines load it as the stock model it is (`vllm serve {where}`); for llama.cpp,
`hf-prune export-gguf {where} model.gguf`.

"""


def model_card(report: PruningReport, repo_id: str | None = None) -> ModelCard:
    """README.md of the pruned checkpoint: what was done, how well it kept quality, how to load it.

    ``repo_id`` (the Hub repo it is pushed to) is written into the loading snippets."""
    where = repo_id or "<this directory or repo>"
    base = report.base_model or "an unnamed model"
    data = ModelCardData(base_model=hub_id_or_none(report.base_model), library_name="transformers",
                         pipeline_tag="text-generation", tags=["pruned", "hf-prune", "structured-pruning"])
    options = ", ".join(f"`{key}={value}`" for key, value in run_options(report).items())
    bullets = "\n".join(f"- {line}" for line in summary_lines(report))
    rows = "\n".join(f"| {row.layer} | {row.kv_groups_after}/{row.kv_groups_before} | "
                     f"{row.neurons_after}/{row.neurons_before} |" for row in report.layers)
    load = (LOAD_STOCK if report.config.get("uniform_shapes") else LOAD_PRUNED + SERVE_PRUNED).format(where=where)
    sections = "\n".join(part for part in (_quality_section(report), _recovery_section(report)) if part)
    body = f"""
# Structurally pruned {base}

Pruned with hf-prune {report.version} (`pip install hf-prune`; {options}). Whole KV groups (a key/value head
with its query heads) and MLP neurons were removed (a layer at 0 lost that whole sublayer), so the weights
are physically smaller and faster; no sparse kernel is needed.

{bullets}

{sections}
{load}Score it like any model: `hf-prune eval --model {where} --eval-tasks hellaswag,arc_easy`.

## Kept per layer

![kept fraction per layer](allocation.png)

| layer | KV groups | MLP neurons |
|---:|---:|---:|
{rows}
"""
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
