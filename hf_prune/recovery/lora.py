"""``--recover lora``: train a peft LoRA on the cut model, merge it, and leave a plain model behind.

Why LoRA and not a full fine-tune: the pruned model must stay the checkpoint a user can reload with
plain ``from_pretrained`` (and serve), and a low-rank update trained on a few thousand tokens moves
few enough weights to repair what the cut broke without overfitting them; merging it afterwards
(``merge_and_unload``) keeps the saved shapes exactly those of the cut. This is LLM-Pruner's
recovery stage, with peft doing the adapter work.
"""

from __future__ import annotations

import logging
import time
import warnings

import torch
from torch import nn
from tqdm.auto import tqdm

from ..calibration.rows import RecoveryText
from ..config import RecoveryOptions
from ..quality.paired import paired_perplexity
from ..runtime.offload import execution_device
from .result import RecoveryResult

logger = logging.getLogger(__name__)


def recover_with_lora(
    model: nn.Module, train_ids: torch.Tensor, eval_ids: torch.Tensor, options: RecoveryOptions, *, seed: int = 0
) -> RecoveryResult:
    """Train a LoRA on ``train_ids`` rows (next-token loss) and merge it into ``model`` in place — unless it
    did not lower the perplexity of the held-out ``eval_ids`` rows, then it is discarded (``kept`` False).

    Rows are visited in a seeded random order, ``options.batch_size`` per step, for ``options.steps``
    steps (the order restarts when the rows run out). The model's own weights stay frozen; only the
    adapters train, so memory is that of the frozen model plus the adapters and their Adam state.
    """
    from peft import LoraConfig, get_peft_model  # deferred: peft imports bitsandbytes, needed only here

    before = paired_perplexity(model, token_set=eval_ids, batch_size=options.batch_size)
    lora = LoraConfig(r=options.rank, lora_alpha=options.alpha or 2 * options.rank, lora_dropout=0.0,
                      target_modules=options.target_module_names, task_type="CAUSAL_LM")
    # the adapters' random init comes from the seed, not from whatever ran before (lm-eval, calibration), and
    # the caller's random state is left as it was
    with torch.random.fork_rng(), warnings.catch_warnings():
        torch.manual_seed(seed)
        # peft reads transformers' deprecated `is_gradient_checkpointing` (peft's to fix, not the user's)
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, lora)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    started = time.perf_counter()
    _train(peft_model, trainable, train_ids, options, seed)
    with_adapter = paired_perplexity(peft_model, token_set=eval_ids, batch_size=options.batch_size)
    kept = with_adapter < before
    _merge_or_discard(model, peft_model, kept)
    seconds = time.perf_counter() - started
    after = paired_perplexity(model, token_set=eval_ids, batch_size=options.batch_size)
    if not kept:
        logger.warning("LoRA recovery did not lower the perplexity of the %d held-out rows (%.3f -> %.3f); the "
                       "adapter was discarded and the cut model is kept as it was", eval_ids.shape[0], before,
                       with_adapter)
    logger.info("LoRA recovery: perplexity %.3f -> %.3f on %d held-out rows in %.1fs", before, after,
                eval_ids.shape[0], seconds)
    return RecoveryResult("lora", before, after, options.steps, sum(p.numel() for p in trainable),
                          options.steps * options.batch_size * train_ids.shape[1], seconds, kept)


def recover(model: nn.Module, text: RecoveryText, options: RecoveryOptions, *, seed: int = 0, teacher=None,
            state_dir: str | None = None, resume: bool = False) -> RecoveryResult:
    """The registry's entry (:data:`hf_prune.registry.RECOVERIES`): the fixed rows of ``text``; no teacher."""
    return recover_with_lora(model, text.train, text.held_out, options, seed=seed)


def _train(peft_model: nn.Module, trainable: list[nn.Parameter], train_ids: torch.Tensor, options: RecoveryOptions,
           seed: int) -> None:
    """``options.steps`` AdamW steps on the next-token loss, rows in a seeded order."""
    optimizer = torch.optim.AdamW(trainable, lr=options.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    device = execution_device(peft_model)
    order: list[int] = []
    peft_model.train()
    bar = tqdm(range(options.steps), desc="LoRA recovery", unit="step", leave=False)
    for _ in bar:
        if len(order) < options.batch_size:
            order += torch.randperm(train_ids.shape[0], generator=generator).tolist()
        rows, order = order[: options.batch_size], order[options.batch_size:]
        batch = train_ids[rows].to(device)
        loss = peft_model(input_ids=batch, labels=batch).loss
        loss.backward()
        loss = loss.detach()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}")


def _merge_or_discard(model: nn.Module, peft_model: nn.Module, kept: bool) -> None:
    """Keep the adapter only if it helped on the held-out rows of the recovery text (never judged on the
    evaluation tasks, which may be a test split); merged, the saved model is a plain checkpoint."""
    result_model = peft_model.merge_and_unload() if kept else peft_model.unload()
    if result_model is not model:  # peft edits the model in place and hands the same object back
        raise RuntimeError("peft returned a new model object; hf-prune expects the model edited in place")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)  # as from_pretrained leaves them; peft froze them for training
