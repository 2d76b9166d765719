"""The Hyperflux gate-training loop: pressure phase, regrowth phase, projection.

Loss = LM loss on calibration rows + pressure · Σ_g P_g·m_g / Σ_g P_g. Only the gate logits train
(Adam); the base model is frozen. Every ``tick_every`` optimizer steps the scheduler compares the open
parameter share with its target curve and moves the pressure; after ``steps`` steps a regrowth phase at
zero pressure with a linearly decaying learning rate lets useful groups reopen; then the gates are
projected onto exactly the budget.

Data parallel: under ``accelerate launch`` each process runs its share of the calibration rows and
the gate gradients are averaged across processes before each step, so all processes hold identical
gates. Resumable: gate logits, Adam moments, scheduler and trajectory are written (safetensors +
JSON, atomically) every ``checkpoint_every`` steps, and the batch order is a function of
(seed, step) alone, so a resumed run ends exactly where an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import reduce
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..adapters import PrunableScope
from ..config import HyperfluxOptions
from ..distributed import process_state
from ..errors import ConfigError
from ..statistics import shard_for_this_process
from .gates import GateSet
from .projection import project_to_budget
from .scheduler import PressureScheduler, TargetTrajectory

logger = logging.getLogger(__name__)

STATE_TENSORS, STATE_JSON = "hyperflux_state.safetensors", "hyperflux_state.json"


def saved_state_step(state_dir: str | os.PathLike | None) -> int | None:
    """The step of the complete state saved in ``state_dir``, or None if there is none."""
    if not state_dir or not (Path(state_dir) / STATE_JSON).is_file():
        return None
    try:
        return int(json.loads((Path(state_dir) / STATE_JSON).read_text())["step"])
    except (ValueError, KeyError, TypeError):
        return None


def check_saved_state(state_dir: str | os.PathLike | None, *, resume: bool, restart: bool) -> None:
    """An interrupted run's state is never thrown away silently: a new run must say what to do with it.

    ``restart`` discards it; ``resume`` continues from it (and needs one); otherwise a saved state is
    an error naming both flags.
    """
    step = saved_state_step(state_dir)
    if restart and state_dir:
        shutil.rmtree(state_dir, ignore_errors=True)
    elif resume and step is None:
        raise ConfigError(f"--resume: no Hyperflux state in {str(state_dir)!r}; run once without --resume first")
    elif not resume and step is not None:
        raise ConfigError(f"an interrupted Hyperflux run saved its state at step {step} in {str(state_dir)!r}; "
                          "pass --resume to continue it, or --restart to discard it and start from step 0")


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
    ):
        self.model = model
        self.scopes = list(scopes)
        self.params_per_group = dict(params_per_group)
        self.kept_budget = kept_budget
        self.options = options
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
        device = next(model.parameters()).device
        self.gates.to(device)
        self.optimizer = self._new_optimizer()
        target_density = kept_budget / self.gates.total_cost
        ticks = options.steps // options.tick_every
        self.scheduler = PressureScheduler(
            TargetTrajectory(min(max(target_density, 1e-6), 1.0), ticks), options.pressure_step, options.pressure_exponent
        )
        self.trajectory: list[dict[str, Any]] = []
        self.step = 0
        self.fingerprint = self._fingerprint(input_ids)
        self._stop_requested = False
        if options.state_dir:
            check_saved_state(options.state_dir, resume=options.resume, restart=options.restart)

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

    @functools.lru_cache(maxsize=2)
    def _epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.rows.shape[0], generator=generator)

    # -- loop ------------------------------------------------------------------------------
    def run(self, on_step_end: Callable[[int], None] | None = None) -> HyperfluxResult:
        options = self.options
        if options.resume:
            self._load_state()
        total = options.steps + options.regrowth_steps
        started = time.perf_counter()
        flags = [p.requires_grad for p in self.model.parameters()]
        was_training = self.model.training
        self.model.requires_grad_(False)
        if options.gradient_checkpointing:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            self.model.train()  # transformers checkpoints only in training mode; these models have no dropout
        else:
            self.model.eval()
        device = next(self.model.parameters()).device
        state = process_state()
        quiet = {} if state.is_main_process else {"disable": True}  # otherwise tqdm's defaults (TQDM_DISABLE=1 works)
        progress = tqdm(total=total, initial=self.step, desc="hyperflux gates", unit="step", **quiet)
        try:
            with torch.enable_grad(), self.gates.masks(self.model), self._stop_at_step_boundary():
                while self.step < total:
                    if self.step == options.steps and options.regrowth_steps:
                        # regrowth starts from fresh moments: only the flux of the LM loss moves gates now
                        self.optimizer = self._new_optimizer()
                    lm_loss = self._optimizer_step(device)
                    self.step += 1
                    self._maybe_tick(lm_loss)
                    if options.state_dir and self.step % options.checkpoint_every == 0 and self.step < total:
                        self._save_state()
                    progress.update(1)
                    if self.step % options.tick_every == 0:
                        progress.set_postfix(density=f"{self.gates.density():.3f}",
                                             gamma=f"{self.scheduler.state.gamma:.2f}", loss=f"{lm_loss:.3f}",
                                             refresh=False)
                    if on_step_end is not None:
                        on_step_end(self.step)
                    if self._stop_everywhere() and self.step < total:
                        self._save_state()
                        raise KeyboardInterrupt(f"stopped after step {self.step}; state saved in {options.state_dir}")
        finally:
            progress.close()
            for param, flag in zip(self.model.parameters(), flags):
                param.requires_grad_(flag)
            if options.gradient_checkpointing:
                self.model.activation_checkpointing_disable()
            self.model.train(was_training)
        logits = {name: value.cpu() for name, value in self.gates.logits_by_scope().items()}
        plan = project_to_budget(self.scopes, logits, self.params_per_group, self.kept_budget)
        if options.state_dir and state.is_main_process:
            shutil.rmtree(options.state_dir, ignore_errors=True)  # finished: nothing left to resume
        return HyperfluxResult(plan, self.trajectory, logits, self.gates.density(), time.perf_counter() - started,
                               state.num_processes)

    @contextlib.contextmanager
    def _stop_at_step_boundary(self) -> Iterator[None]:
        """Ctrl-C finishes the current step, saves the state and stops (a second Ctrl-C stops at once).

        A state saved mid-step would hold gates of one step and a counter of the other; finishing
        the step costs at most one forward/backward and loses nothing.
        """
        if not self.options.state_dir or threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum, frame) -> None:
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            print("\nhf-prune: stopping after this step to save the Hyperflux state (Ctrl-C again to stop now)",
                  file=sys.stderr, flush=True)

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop_everywhere(self) -> bool:
        """Whether any process was asked to stop: all stop at the same step, so their states agree."""
        if process_state().num_processes == 1:
            return self._stop_requested
        flag = torch.tensor([float(self._stop_requested)], device=next(self.gates.parameters()).device)
        return bool(reduce(flag, reduction="sum").item() > 0)

    def _learning_rate(self) -> float:
        """Constant while pressure acts; linear decay to zero over the regrowth phase."""
        options = self.options
        if self.step < options.steps:
            return options.gate_lr
        done = self.step - options.steps
        return options.gate_lr * (1.0 - done / max(options.regrowth_steps, 1))

    def _optimizer_step(self, device: torch.device) -> float:
        options = self.options
        for group in self.optimizer.param_groups:
            group["lr"] = self._learning_rate()
        self.optimizer.zero_grad(set_to_none=True)
        lm_total = 0.0
        for micro in range(options.grad_accum):
            batch = self._rows_for(self.step, micro).to(device)
            loss = self.model(batch, labels=batch, use_cache=False).loss / options.grad_accum
            loss.backward()
            lm_total += float(loss.detach())
        if self.step < options.steps:
            (self.scheduler.pressure * self.gates.pressure_term()).backward()
        self._average_gradients()
        self.optimizer.step()
        return lm_total

    def _average_gradients(self) -> None:
        if process_state().num_processes == 1:
            return
        for param in self.gates.parameters():
            if param.grad is not None:
                param.grad.copy_(reduce(param.grad, reduction="mean"))

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
    def _fingerprint(self, input_ids: torch.Tensor) -> str:
        """Identifies the run (options that shape the result, calibration rows, gated scopes)."""
        bookkeeping = ("state_dir", "resume", "restart", "checkpoint_every")  # say where the state is, not what it is
        options = {k: v for k, v in vars(self.options).items() if k not in bookkeeping}
        options.update(batch_size=self.batch_size, seed=self.seed)
        digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
        digest.update(input_ids.numpy().tobytes())
        digest.update(json.dumps([(s.name, s.num_groups) for s in self.scopes]).encode())
        digest.update(str(self.kept_budget).encode())
        return digest.hexdigest()[:16]

    def _save_state(self) -> None:
        if not process_state().is_main_process:
            return
        directory = Path(self.options.state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"logits/{name}": value.contiguous() for name, value in self.gates.logits_by_scope().items()}
        adam_steps = []
        for index, param in enumerate(self.gates.parameters()):
            slot = self.optimizer.state.get(param, {})
            if slot:
                tensors[f"adam/{index}/exp_avg"] = slot["exp_avg"].detach().cpu().contiguous()
                tensors[f"adam/{index}/exp_avg_sq"] = slot["exp_avg_sq"].detach().cpu().contiguous()
                adam_steps.append(float(slot["step"]))
        meta = {"fingerprint": self.fingerprint, "step": self.step, "scheduler": self.scheduler.state_dict(),
                "adam_steps": adam_steps, "trajectory": self.trajectory}
        temporary = directory / (STATE_TENSORS + ".tmp")
        save_file({k: v.cpu() for k, v in tensors.items()}, str(temporary))
        os.replace(temporary, directory / STATE_TENSORS)
        temporary = directory / (STATE_JSON + ".tmp")
        temporary.write_text(json.dumps(meta))
        os.replace(temporary, directory / STATE_JSON)  # written last: its presence means the pair is complete

    def _load_state(self) -> None:
        directory = Path(self.options.state_dir or "")
        check_saved_state(directory, resume=True, restart=False)  # the state may have gone since __init__
        meta = json.loads((directory / STATE_JSON).read_text())
        if meta["fingerprint"] != self.fingerprint:
            raise ConfigError(f"--resume: the state in {str(directory)!r} belongs to a run with other options or "
                              "calibration data; resume with the same command, or pass --restart to discard it")
        tensors = load_file(str(directory / STATE_TENSORS))
        device = next(self.gates.parameters()).device
        with torch.no_grad():
            for scope in self.scopes:
                self.gates.logits[GateSet.key(scope)].copy_(tensors[f"logits/{scope.name}"].to(device))
        for index, param in enumerate(self.gates.parameters()):
            if f"adam/{index}/exp_avg" in tensors:
                self.optimizer.state[param] = {
                    "step": torch.tensor(meta["adam_steps"][index]),
                    "exp_avg": tensors[f"adam/{index}/exp_avg"].to(device),
                    "exp_avg_sq": tensors[f"adam/{index}/exp_avg_sq"].to(device),
                }
        self.scheduler.load_state_dict(meta["scheduler"])
        self.trajectory = meta["trajectory"]
        self.step = int(meta["step"])
        logger.info("resumed Hyperflux from step %d", self.step)
