"""``--recover distill``: train the cut model (all its weights, or a LoRA) to reproduce the dense teacher's
next-token distributions on streamed text, for a budget of tokens.

Why a ``transformers.Trainer`` and not a loop of our own: what a user spending GPU hours expects of training —
``accelerate`` data parallelism and FSDP under ``accelerate launch``, gradient accumulation, gradient checkpointing,
bf16, the cosine schedule, checkpoints that resume with the optimizer, scheduler, RNG and data position restored —
is the Trainer's, tested by many. Only the loss is ours (:mod:`.losses`: the teacher runs beside the student on the
same rows, no gradient), the held-out measures (KL to the teacher and perplexity, on rows the stream never trains
on), and Ctrl-C: the first one finishes the step, saves a checkpoint and stops; ``--resume`` continues from it.

The budget fixes the schedule: steps = tokens / (rows per step × sequence length), a linear warm-up over the first
:data:`WARMUP_SHARE` of them, then a cosine down to :data:`MIN_LR_RATE` of the peak (Minitron's 1e-4 → 1e-5).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from ..calibration.rows import RecoveryText
from ..config import RecoveryOptions
from ..errors import ConfigError
from ..runtime.distributed import any_process, process_state
from ..runtime.interrupt import StopRequest, stop_at_step_boundary
from ..runtime.saved_state import fingerprint, read_record, write_record
from .losses import LossWeights, hidden_state_loss, kl_to_teacher, language_modelling_loss
from .result import RecoveryResult
from ..calibration.stream import PackedTokenStream

logger = logging.getLogger(__name__)

#: name of the recovery's record in the state directory, and of the folder of its checkpoints
RECORD = "recovery"
#: share of the steps spent warming the learning rate up from zero
WARMUP_SHARE = 0.05
#: the cosine ends at this fraction of the peak learning rate
MIN_LR_RATE = 0.1


@dataclass
class DistillationSettings:
    """How long and how to train (the flags ``--recover-*`` and ``--distill-*``; see :class:`RecoveryOptions`)."""

    tokens: int
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-4
    params: str = "full"  # or "lora"
    lora_rank: int = 8
    lora_alpha: float | None = None
    lora_targets: str | list[str] = "all-linear"
    weights: LossWeights = field(default_factory=LossWeights)
    eval_every: int = 0  # steps between held-out measures (0: at the start and the end only)
    save_minutes: float | None = None  # minutes between checkpoints in ``state_dir`` (None: only on Ctrl-C)
    gradient_checkpointing: bool = False
    state_dir: str | None = None
    resume: bool = False

    def tokens_per_step(self, seq_len: int, processes: int = 1) -> int:
        """Tokens one optimizer step trains on, over every process."""
        return self.batch_size * self.grad_accum * seq_len * processes

    def steps(self, seq_len: int, processes: int = 1) -> int:
        """Optimizer steps the token budget buys (at least one)."""
        return max(1, math.ceil(self.tokens / self.tokens_per_step(seq_len, processes)))


class _TrainingRows(torch.utils.data.IterableDataset):
    """The stream's training rows as the Trainer reads them (the held-out rows are not among them)."""

    def __init__(self, stream: PackedTokenStream):
        self.stream = stream

    def __iter__(self):
        for row in self.stream.rows():
            yield {"input_ids": row}


class DistillationTrainer(Trainer):
    """A Trainer whose loss is :mod:`.losses`' against ``teacher`` and whose evaluation is the held-out KL and
    perplexity (:func:`held_out_measures`)."""

    loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer divides it over the accumulated micro-batches

    def __init__(self, *args, teacher: nn.Module | None, weights: LossWeights, held_out: torch.Tensor,
                 tokens_per_step: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher, self.weights, self.held_out = teacher, weights, held_out
        self.tokens_per_step = tokens_per_step
        self._started = time.perf_counter()
        self._start_step = 0

    def train(self, resume_from_checkpoint: str | None = None, **kwargs):
        """The Trainer's training, the rate's clock started here (a resumed run counts from its checkpoint's step)."""
        self._started = time.perf_counter()
        self._start_step = _checkpoint_step(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        input_ids = inputs["input_ids"]
        weights = self.weights
        hidden = weights.hidden > 0
        outputs = model(input_ids=input_ids, output_hidden_states=hidden, use_cache=False)
        loss = outputs.logits.new_zeros((), dtype=torch.float32)
        if weights.needs_teacher:
            with torch.no_grad():
                teacher = self.teacher(input_ids=input_ids.to(_device_of(self.teacher)), output_hidden_states=hidden,
                                       use_cache=False)
            if weights.kl > 0:
                loss = loss + weights.kl * kl_to_teacher(outputs.logits, teacher.logits.to(outputs.logits.device),
                                                         weights.temperature)
            if hidden:
                loss = loss + weights.hidden * hidden_state_loss(outputs.hidden_states[-1],
                                                                 teacher.hidden_states[-1].to(outputs.logits.device))
        if weights.lm > 0:
            loss = loss + weights.lm * language_modelling_loss(outputs.logits, input_ids)
        return (loss, outputs) if return_outputs else loss

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        measures = held_out_measures(self.model, self.teacher, self.held_out, self.args.per_device_train_batch_size)
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in measures.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """The Trainer's log line, with the tokens trained so far and their rate (this process's run)."""
        logs = dict(logs)
        logs["tokens"] = self.state.global_step * self.tokens_per_step
        elapsed = time.perf_counter() - self._started
        if "loss" in logs and elapsed > 0:
            logs["tokens_per_second"] = round((self.state.global_step - self._start_step) * self.tokens_per_step
                                              / elapsed, 1)
        super().log(logs, *args, **kwargs)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


@torch.no_grad()
def held_out_measures(model: nn.Module, teacher: nn.Module | None, rows: torch.Tensor, batch_size: int
                      ) -> dict[str, float]:
    """Mean per-token KL(teacher ‖ model) (when there is a teacher) and the model's perplexity on ``rows``."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    kl, nll, tokens = 0.0, 0.0, 0
    for batch in rows.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch, use_cache=False).logits
        predicted = batch[:, 1:].numel()
        nll += float(language_modelling_loss(logits, batch)) * predicted
        if teacher is not None:
            reference = teacher(input_ids=batch.to(_device_of(teacher)), use_cache=False).logits.to(device)
            kl += float(kl_to_teacher(logits, reference)) * batch.numel()
        tokens += predicted
    model.train(was_training)
    measures = {"perplexity": math.exp(nll / tokens)}
    if teacher is not None:
        measures["kl"] = kl / rows.numel()
    return measures


class _StopOnRequest(TrainerCallback):
    """Ctrl-C (:func:`stop_at_step_boundary`) ends training after the step in progress, with a checkpoint; and a
    checkpoint every ``save_minutes`` (by the clock, not by steps: one step of an 8B student takes seconds on a GPU
    and a minute on a CPU, and a checkpoint of it with its optimizer is tens of GB). Every process takes the same
    decision (the flags are reduced), as the Trainer's collective save needs."""

    def __init__(self, request: StopRequest, device: torch.device, save_minutes: float | None):
        self.request, self.device, self.save_minutes = request, device, save_minutes
        self.stopped = False
        self._last_save = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        due = self.save_minutes is not None and time.monotonic() - self._last_save >= 60 * self.save_minutes
        if any_process(self.request.requested, self.device) and state.global_step < state.max_steps:
            control.should_training_stop = True
            self.stopped = due = True
        if any_process(due, self.device) and state.global_step < state.max_steps:
            control.should_save = True
            self._last_save = time.monotonic()
        return control


def training_arguments(settings: DistillationSettings, steps: int, output_dir: str, seed: int) -> TrainingArguments:
    """The Trainer's arguments for ``steps`` optimizer steps of ``settings``."""
    return TrainingArguments(
        output_dir=output_dir, max_steps=steps, per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum, learning_rate=settings.lr, weight_decay=0.0,
        lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": MIN_LR_RATE},
        warmup_steps=max(1, round(WARMUP_SHARE * steps)) if steps > 1 else 0,
        logging_steps=max(1, min(50, steps // 20)), eval_strategy="steps" if settings.eval_every else "no",
        eval_steps=settings.eval_every or None, save_strategy="no", save_total_limit=1, report_to=[], seed=seed,
        data_seed=seed,
        bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported(), use_cpu=not torch.cuda.is_available(),
        activation_checkpointing=settings.gradient_checkpointing, remove_unused_columns=False,
        dataloader_num_workers=0, disable_tqdm=not process_state().is_main_process, save_only_model=False,
    )


def student_of(model: nn.Module, settings: DistillationSettings, seed: int) -> nn.Module:
    """The model to train: ``model`` itself with every weight trainable, or a peft LoRA around it."""
    if settings.params == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model  # deferred: peft imports bitsandbytes

    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha or 2 * settings.lora_rank,
                        lora_dropout=0.0, target_modules=settings.lora_targets, task_type="CAUSAL_LM")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return get_peft_model(model, config)


class _RecordOnSave(TrainerCallback):
    """After each checkpoint, the state's JSON record (:mod:`hf_prune.runtime.saved_state`): what ``--resume`` and
    the line after Ctrl-C read, and the fingerprint that refuses another run's checkpoint."""

    def __init__(self, state_dir: str, fingerprint: str):
        self.state_dir, self.fingerprint = state_dir, fingerprint

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            write_record(self.state_dir, RECORD, {"fingerprint": self.fingerprint,
                                                  "progress": f"recovery step {state.global_step} of {state.max_steps}"})
        return control


def run_fingerprint(model: nn.Module, stream: PackedTokenStream, settings: DistillationSettings) -> str:
    """The options that shape the training, the held-out rows, and the student's shapes (the cut)."""
    options = {key: value for key, value in vars(settings).items()
               if key not in ("state_dir", "resume", "eval_every", "save_minutes")}
    shapes = [(name, list(parameter.shape)) for name, parameter in model.named_parameters()]
    return fingerprint(options, stream.held_out(), shapes, settings.tokens)


def _resume_from(settings: DistillationSettings, fingerprint_: str) -> str | None:
    """The checkpoint to continue from: the last in the state's recovery folder, when ``--resume`` and this run
    saved one (the record's fingerprint and version are checked); None: train from the start."""
    if not (settings.resume and settings.state_dir and (Path(settings.state_dir) / f"{RECORD}_state.json").is_file()):
        return None
    read_record(settings.state_dir, RECORD, fingerprint_)
    folder = Path(settings.state_dir) / RECORD
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def train_with_teacher(model: nn.Module, teacher: nn.Module | None, stream: PackedTokenStream,
                       settings: DistillationSettings, *, seed: int, scratch_dir: str) -> dict[str, Any]:
    """Train ``model`` in place (a LoRA is merged into it afterwards); returns what was measured and spent.

    Raises KeyboardInterrupt after a Ctrl-C, once the checkpoint is in ``settings.state_dir``."""
    processes = process_state().num_processes
    seq_len = stream.seq_len
    steps = settings.steps(seq_len, processes)
    fingerprint_ = run_fingerprint(model, stream, settings)
    resume_from = _resume_from(settings, fingerprint_)
    output_dir = str(Path(settings.state_dir) / RECORD) if settings.state_dir else scratch_dir
    student = student_of(model, settings, seed)
    if teacher is not None and not hasattr(teacher, "hf_device_map"):
        teacher.to(_device_of(model))
    teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
    args = training_arguments(settings, steps, output_dir, seed)
    # the eval_dataset is what the Trainer checks for; the held-out measures read ``held_out`` (:meth:`evaluate`)
    trainer = DistillationTrainer(model=student, args=args, train_dataset=_TrainingRows(stream),
                                  eval_dataset=[{"input_ids": row} for row in stream.held_out()], teacher=teacher,
                                  weights=settings.weights, held_out=stream.held_out(),
                                  tokens_per_step=settings.tokens_per_step(seq_len, processes))
    if settings.state_dir:
        trainer.add_callback(_RecordOnSave(settings.state_dir, fingerprint_))
    before = held_out_measures(student, teacher, stream.held_out(), settings.batch_size)
    started = time.perf_counter()
    with stop_at_step_boundary("the recovery checkpoint", enabled=bool(settings.state_dir)) as request:
        stop = _StopOnRequest(request, args.device, settings.save_minutes if settings.state_dir else None)
        trainer.add_callback(stop)
        trainer.train(resume_from_checkpoint=resume_from)
    if stop.stopped:
        raise KeyboardInterrupt(f"stopped after step {trainer.state.global_step}; checkpoint in {output_dir}")
    after = held_out_measures(student, teacher, stream.held_out(), settings.batch_size)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    if settings.params == "lora":
        merged = student.merge_and_unload()
        if merged is not model:
            raise RuntimeError("peft returned a new model object; hf-prune expects the model edited in place")
    model.eval()
    start = {"tokens": 0, **{f"eval_{name}": value for name, value in before.items()}}
    return {"before": before, "after": after, "steps": steps, "tokens": steps * trainer.tokens_per_step,
            "seconds": time.perf_counter() - started, "history": [start, *trainer.state.log_history],
            "trainable_parameters": trainable}


def _checkpoint_step(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0


#: held-out measures over a run whose --recover-eval-every is 0 (the default)
EVALUATIONS = 10


def recover_with_distillation(model: nn.Module, text: RecoveryText, options: RecoveryOptions, *, seed: int = 0,
                              teacher: Callable[[], nn.Module] | None = None, state_dir: str | None = None,
                              resume: bool = False) -> RecoveryResult:
    """The registry's entry (:data:`hf_prune.registry.RECOVERIES`): distil ``model`` in place from the teacher
    ``teacher()`` loads, on ``text.stream``, for ``options.tokens`` tokens. With ``state_dir`` a Ctrl-C leaves a
    checkpoint there, and ``resume`` (``--resume``) continues from it."""
    weights = LossWeights(kl=options.kl_weight, lm=options.lm_weight, hidden=options.hidden_weight,
                          temperature=options.temperature)
    settings = DistillationSettings(
        tokens=options.tokens, batch_size=options.batch_size, grad_accum=options.grad_accum, lr=options.peak_lr,
        params=options.params, lora_rank=options.rank, lora_alpha=options.alpha,
        lora_targets=options.target_module_names, weights=weights, gradient_checkpointing=options.gradient_checkpointing,
        save_minutes=options.save_minutes, state_dir=state_dir, resume=resume)
    steps = settings.steps(text.stream.seq_len, process_state().num_processes)
    settings.eval_every = options.eval_every or max(1, steps // EVALUATIONS)  # ten measures when not asked
    dense = teacher() if weights.needs_teacher and teacher is not None else None
    if weights.needs_teacher and dense is None:
        raise ConfigError("--recover distill needs the dense teacher; give the model by name or path, or train on "
                          "the language-modelling loss alone (--distill-kl-weight 0 --distill-lm-weight 1)")
    with tempfile.TemporaryDirectory(prefix="hf-prune-distill-") as scratch:
        outcome = train_with_teacher(model, dense, text.stream, settings, seed=seed, scratch_dir=scratch)
    del dense
    before, after = outcome["before"], outcome["after"]
    logger.info("distillation: held-out perplexity %.3f -> %.3f, KL %s -> %s, %d tokens in %.1fs",
                before["perplexity"], after["perplexity"], before.get("kl"), after.get("kl"), outcome["tokens"],
                outcome["seconds"])
    return RecoveryResult("distill", before["perplexity"], after["perplexity"], outcome["steps"],
                          outcome["trainable_parameters"], outcome["tokens"], outcome["seconds"],
                          kl_before=before.get("kl"), kl_after=after.get("kl"), history=outcome["history"])
