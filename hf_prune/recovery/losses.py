"""What distillation minimises: the student's next-token distribution against the dense teacher's.

The main term is KL(teacher ‖ student) of the softened distributions, scaled by T² so its gradient does not shrink
as the temperature grows (Hinton et al.; Minitron and ModelOpt distil pruned LLMs on this logit term alone). Two
optional terms: the language-modelling loss on the text itself, and a hidden-state term — the mean squared
difference of the last hidden states, divided by the teacher's mean square so its scale does not depend on the
model (pruning keeps the hidden size, so student and teacher states align).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: vocabulary rows turned into probabilities at a time (Llama-3's 128k vocabulary × 4k tokens is 2 GB in float32)
TOKENS_PER_CHUNK = 1024


@dataclass(frozen=True)
class LossWeights:
    """Weights of the three terms (``--distill-kl-weight``, ``--distill-lm-weight``, ``--distill-hidden-weight``)
    and the softmax temperature (``--distill-temperature``)."""

    kl: float = 1.0
    lm: float = 0.0
    hidden: float = 0.0
    temperature: float = 1.0

    @property
    def needs_teacher(self) -> bool:
        return self.kl > 0 or self.hidden > 0


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Mean per-token KL(teacher ‖ student) of the temperature-softened distributions, × T² (float32, a chunk of
    tokens at a time so the vocabulary-wide probabilities of a long batch are never all held at once)."""
    student = student_logits.reshape(-1, student_logits.shape[-1])
    teacher = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    total = student.new_zeros((), dtype=torch.float32)
    for first in range(0, student.shape[0], TOKENS_PER_CHUNK):
        rows = slice(first, first + TOKENS_PER_CHUNK)
        student_log = F.log_softmax(student[rows].float() / temperature, dim=-1)
        teacher_log = F.log_softmax(teacher[rows].float() / temperature, dim=-1)
        total = total + F.kl_div(student_log, teacher_log, log_target=True, reduction="sum")
    return total / student.shape[0] * temperature ** 2


def language_modelling_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of packed rows (every position but the last predicts the next token)."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1))


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the last hidden states over the teacher's mean square (scale-free)."""
    teacher = teacher_hidden.float()
    return (student_hidden.float() - teacher).pow(2).mean() / teacher.pow(2).mean().clamp_min(1e-12)
