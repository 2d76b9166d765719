"""The Hyperflux gate-training loop: pressure phase, regrowth phase, projection.

Loss = LM loss on calibration rows + pressure · Σ_g P_g·m_g / Σ_g P_g. Only the gate logits train
(Adam); the base model is frozen. Every ``tick_every`` optimizer steps the scheduler compares the open
parameter share with its target curve and moves the pressure; after ``steps`` steps a regrowth phase at
zero pressure with a linearly decaying learning rate lets useful groups reopen; then the gates are
projected onto exactly the budget.

Data parallel: under ``accelerate launch`` each process runs its share of the calibration rows and
the gate gradients are averaged across processes before each step (:mod:`hf_prune.runtime.distributed`), so all
processes hold identical gates. Resumable (:mod:`hf_prune.runtime.saved_state`): the state is written every ``checkpoint_every`` steps
and when Ctrl-C stops the run at a step boundary (:mod:`hf_prune.runtime.interrupt`), and the batch order is a
function of (seed, step) alone, so a resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...adapters import PrunableScope
from ...config import HyperfluxOptions, RunStateOptions
from ...errors import ConfigError
from ...runtime.distributed import any_process, average_gradients, process_state, shard_for_this_process
from ...runtime.interrupt import stop_at_step_boundary
from ...runtime.modes import mode
from ...runtime.saved_state import check_saved_state, discard_saved_state, fingerprint, read_state, write_state
from .gates import GateSet
from .projection import project_to_budget
from .scheduler import PressureScheduler, TargetTrajectory

logger = logging.getLogger(__name__)

#: the name of the gates' state in --state-dir (``hyperflux_state.json`` and ``.safetensors``)
STATE_NAME = "hyperflux"


@dataclass
class HyperfluxResult:
    plan: dict[str, list[int]]
    trajectory: list[dict[str, Any]]
    logits: dict[str, torch.Tensor] = field(repr=False)
    final_density: float = 1.0
    seconds: float = 0.0
    processes: int = 1


class HyperfluxTrainer:
    def __init__(
        self,
        model: nn.Module,
        scopes: Sequence[PrunableScope],
        params_per_group: Mapping[str, int],
        kept_budget: float,
        input_ids: torch.Tensor,
        options: HyperfluxOptions,
        scores: Mapping[str, torch.Tensor] | None = None,
        *,
        batch_size: int = 1,
        seed: int = 0,
        state: RunStateOptions | None = None,
    ):
        self.model = model
        self.scopes = list(scopes)
        self.params_per_group = dict(params_per_group)
        self.kept_budget = kept_budget
        self.options = options
        self.state = state or RunStateOptions()
        self.batch_size = batch_size
        self.seed = seed
        self.rows = shard_for_this_process(input_ids)
        self.gates = GateSet(self.scopes, self.params_per_group)
        if options.gate_init == "scores":
            if scores is None:
                raise ConfigError("gate_init 'scores' needs importance scores")
            self.gates.init_from_scores(scores)
        else:
            self.gates.init_uniform(generator=torch.Generator().manual_seed(seed))
        self.device = next(model.parameters()).device
        self.gates.to(self.device)
        self.optimizer = self._new_optimizer()
        target_density = kept_budget / self.gates.total_cost
        ticks = options.steps // options.tick_every
        self.scheduler = PressureScheduler(
            TargetTrajectory(min(max(target_density, 1e-6), 1.0), ticks), options.pressure_step, options.pressure_exponent
        )
        self.trajectory: list[dict[str, Any]] = []
        self.step = 0
        self.fingerprint = fingerprint({**vars(options), "batch_size": batch_size, "seed": seed}, input_ids,
                                       [(s.name, s.num_groups) for s in self.scopes], kept_budget)
        self._orders: dict[int, torch.Tensor] = {}  # epoch -> permutation of this process's rows

    def _new_optimizer(self) -> torch.optim.Optimizer:
        """Adam with a short second-moment memory (β₂ = 0.99): the pressure changes every tick, and
        a long memory of large pressure gradients would freeze the gates once the pressure drops."""
        return torch.optim.Adam(self.gates.parameters(), lr=self.options.gate_lr, betas=(0.9, 0.99))

    # -- data ------------------------------------------------------------------------------
    def _rows_for(self, step: int, micro: int) -> torch.Tensor:
        """The rows of one micro-batch: a seeded permutation per pass over this process's rows,
        indexed by position only, so a resumed run sees the same batches."""
        count = self.rows.shape[0]
        size = self.batch_size
        start = (step * self.options.grad_accum + micro) * size
        indices = []
        for position in range(start, start + size):
            epoch, offset = divmod(position, count)
            indices.append(int(self._epoch_order(epoch)[offset]))
        return self.rows[indices]

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        if epoch not in self._orders:
            self._orders = {epoch: torch.randperm(self.rows.shape[0],
                                                  generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))}
        return self._orders[epoch]

    # -- loop ------------------------------------------------------------------------------
    def run(self, on_step_end: Callable[[int], None] | None = None) -> HyperfluxResult:
        options = self.options
        self._start_from_saved_state()
        total = options.steps + options.regrowth_steps
        started = time.perf_counter()
        flags = [p.requires_grad for p in self.model.parameters()]
        state = process_state()
        quiet = {} if state.is_main_process else {"disable": True}  # otherwise tqdm's defaults (TQDM_DISABLE=1 works)
        progress = tqdm(total=total, initial=self.step, desc="hyperflux gates", unit="step", **quiet)
        self.model.requires_grad_(False)
        if options.gradient_checkpointing:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        try:  # transformers checkpoints only in training mode; these models have no dropout
            with mode(self.model, options.gradient_checkpointing), torch.enable_grad(), self.gates.masks(self.model), \
                    stop_at_step_boundary("the Hyperflux state", enabled=bool(self.state.dir)) as stop:
                while self.step < total:
                    self._one_step(progress)
                    if on_step_end is not None:
                        on_step_end(self.step)
                    if any_process(stop.requested, self.device) and self.step < total:
                        self._save_state()
                        raise KeyboardInterrupt(f"stopped after step {self.step}; state saved in {self.state.dir}")
        finally:
            progress.close()
            for param, flag in zip(self.model.parameters(), flags):
                param.requires_grad_(flag)
            if options.gradient_checkpointing:
                self.model.activation_checkpointing_disable()
        logits = {name: value.cpu() for name, value in self.gates.logits_by_scope().items()}
        plan = project_to_budget(self.scopes, logits, self.params_per_group, self.kept_budget)
        if state.is_main_process:
            discard_saved_state(self.state.dir)  # finished: nothing left to resume
        return HyperfluxResult(plan, self.trajectory, logits, self.gates.density(), time.perf_counter() - started,
                               state.num_processes)

    def _one_step(self, progress: tqdm) -> None:
        """One optimizer step, its tick, its snapshot and its line of progress."""
        options = self.options
        if self.step == options.steps and options.regrowth_steps:
            # regrowth starts from fresh moments: only the flux of the LM loss moves gates now
            self.optimizer = self._new_optimizer()
        lm_loss = self._optimizer_step()
        self.step += 1
        self._maybe_tick(lm_loss)
        if self.state.dir and self.step % options.checkpoint_every == 0 and self.step < options.steps + options.regrowth_steps:
            self._save_state()
        progress.update(1)
        if self.step % options.tick_every == 0:
            progress.set_postfix(density=f"{self.gates.density():.3f}", gamma=f"{self.scheduler.state.gamma:.2f}",
                                 loss=f"{lm_loss:.3f}", refresh=False)

    def _learning_rate(self) -> float:
        """Constant while pressure acts; linear decay to zero over the regrowth phase."""
        options = self.options
        if self.step < options.steps:
            return options.gate_lr
        done = self.step - options.steps
        return options.gate_lr * (1.0 - done / max(options.regrowth_steps, 1))

    def _optimizer_step(self) -> float:
        options = self.options
        for group in self.optimizer.param_groups:
            group["lr"] = self._learning_rate()
        self.optimizer.zero_grad(set_to_none=True)
        lm_total = 0.0
        for micro in range(options.grad_accum):
            batch = self._rows_for(self.step, micro).to(self.device)
            loss = self.model(batch, labels=batch, use_cache=False).loss / options.grad_accum
            loss.backward()
            lm_total += float(loss.detach())
        if self.step < options.steps:
            (self.scheduler.pressure * self.gates.pressure_term()).backward()
        average_gradients(self.gates.parameters())
        self.optimizer.step()
        return lm_total

    def _maybe_tick(self, lm_loss: float) -> None:
        options = self.options
        if self.step % options.tick_every:
            return
        density = self.gates.density()
        pruning = self.step <= options.steps
        if pruning:
            self.scheduler.tick(density)
        open_counts = self.gates.open_counts()
        self.trajectory.append({
            "step": self.step,
            "phase": "pressure" if pruning else "regrowth",
            "density": density,
            "target": self.scheduler.target(),
            "gamma": self.scheduler.state.gamma if pruning else 0.0,
            "pressure": self.scheduler.pressure if pruning else 0.0,
            "lm_loss": lm_loss,
            "lr": self._learning_rate(),
            "open": [open_counts[s.name] for s in self.scopes],
        })
        logger.info("hyperflux step %d: density %.4f target %.4f gamma %.3f loss %.4f", self.step, density,
                    self.scheduler.target(), self.scheduler.state.gamma, lm_loss)

    # -- resume ----------------------------------------------------------------------------
    def _start_from_saved_state(self) -> None:
        """Continue the saved state (``resume``), discard it (``restart``), or refuse to overwrite it."""
        state = self.state
        if not state.dir:
            return
        check_saved_state(state.dir, resume=state.resume, restart=state.restart)
        if state.restart:
            discard_saved_state(state.dir)
        elif state.resume:
            self._load_state()

    def _save_state(self) -> None:
        if not process_state().is_main_process:
            return
        tensors = {f"logits/{name}": value for name, value in self.gates.logits_by_scope().items()}
        adam_steps = []
        for index, param in enumerate(self.gates.parameters()):
            slot = self.optimizer.state.get(param, {})
            if slot:
                tensors[f"adam/{index}/exp_avg"] = slot["exp_avg"]
                tensors[f"adam/{index}/exp_avg_sq"] = slot["exp_avg_sq"]
                adam_steps.append(float(slot["step"]))
        write_state(self.state.dir, STATE_NAME, tensors, {
            "fingerprint": self.fingerprint, "progress": f"Hyperflux step {self.step}", "step": self.step, "scheduler": self.scheduler.state_dict(),
            "adam_steps": adam_steps, "trajectory": self.trajectory})

    def _load_state(self) -> None:
        tensors, meta = read_state(self.state.dir, STATE_NAME, self.fingerprint)
        with torch.no_grad():
            for scope in self.scopes:
                self.gates.logits[GateSet.key(scope)].copy_(tensors[f"logits/{scope.name}"].to(self.device))
        for index, param in enumerate(self.gates.parameters()):
            if f"adam/{index}/exp_avg" in tensors:
                self.optimizer.state[param] = {
                    "step": torch.tensor(meta["adam_steps"][index]),
                    "exp_avg": tensors[f"adam/{index}/exp_avg"].to(self.device),
                    "exp_avg_sq": tensors[f"adam/{index}/exp_avg_sq"].to(self.device),
                }
        self.scheduler.load_state_dict(meta["scheduler"])
        self.trajectory = meta["trajectory"]
        self.step = int(meta["step"])
        logger.info("resumed Hyperflux from step %d", self.step)
