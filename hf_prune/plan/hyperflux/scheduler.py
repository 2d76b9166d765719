"""Hyperflux's pressure scheduler: a target density curve and a feedback controller on the pressure.

The target remaining fraction follows R(t) = Π_{τ=1..t} d(τ) with
d(τ) = d₀ + (0.999 − d₀)·σ(a/T · (τ − T/2)): large removals early (d small), then a gentle approach
(d → 0.999); d₀ is found by bisection so that R(T) is the target density. At every tick the
controller compares the density with R(t): above it, the pressure grows by a step plus an
accelerating integral term (I⁺ += s/4); below it, it shrinks the same way (I⁻), clipped at zero. The
applied pressure is γ^k: the exponent lets γ reach the scale of a model's gradients in few ticks
(the official code uses the same multiplier). Constants default to the paper's.

One change to the paper's controller, against overshoot: gates answer the pressure with a lag (Adam's
momentum; logits must travel to 0), so by the time the density crosses the curve γ has wound up, and
unwinding it by steps let the density fall far past the target (5M reference model, 100 + 20 steps:
0.61 for a target of 0.80, 0.32 for 0.50). Anti-windup: when the error changes sign from "too dense"
to "too sparse", γ is halved at once (then 0.75 and 0.37; perplexity after projection unchanged within
noise: 1.046 / 1.114 / 1.299 vs 1.039 / 1.116 / 1.304 at 20 / 35 / 50%). Steering by the predicted
density (the last change extrapolated) tracked the curve closer still but ended above the target, and
the projection then cut by barely trained logits: 1.473 at 35%, so it is not done.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


def _decay(tau: float, d0: float, ticks: int, aggressivity: float, end: float) -> float:
    return d0 + (end - d0) / (1.0 + math.exp(-aggressivity / ticks * (tau - ticks / 2)))


@dataclass(frozen=True)
class TargetTrajectory:
    target_density: float
    ticks: int
    aggressivity: float = 6.0
    end_decay: float = 0.999

    def __post_init__(self) -> None:
        if not 0.0 < self.target_density <= 1.0:
            raise ValueError(f"target density must be in (0, 1], got {self.target_density}")
        if self.ticks < 1:
            raise ValueError("the pressure schedule needs at least one tick: raise --steps or lower --tick-every")
        object.__setattr__(self, "d0", self._solve_d0())

    def _remaining(self, d0: float, upto: int) -> float:
        return math.exp(sum(math.log(_decay(t, d0, self.ticks, self.aggressivity, self.end_decay))
                            for t in range(1, upto + 1)))

    def _solve_d0(self) -> float:
        """d₀ in [0, end) with R(T) = target (R(T) grows with d₀: bisection)."""
        if self.target_density >= self._remaining(self.end_decay, self.ticks):
            return self.end_decay
        low, high = 1e-12, self.end_decay
        for _ in range(200):
            middle = 0.5 * (low + high)
            if self._remaining(middle, self.ticks) < self.target_density:
                low = middle
            else:
                high = middle
        return 0.5 * (low + high)

    def at(self, tick: int) -> float:
        """Target remaining fraction after ``tick`` ticks (1.0 at tick 0, the target at T and after)."""
        return self._remaining(self.d0, min(tick, self.ticks))


@dataclass
class PressureState:
    gamma: float = 0.0
    integral_up: float = 0.0
    integral_down: float = 0.0
    tick: int = 0


class PressureScheduler:
    def __init__(self, trajectory: TargetTrajectory, step: float = 0.15, exponent: float = 3.0):
        self.trajectory = trajectory
        self.step = step
        self.exponent = exponent
        self.state = PressureState()

    @property
    def pressure(self) -> float:
        """The multiplier of the pressure term in the loss."""
        return self.state.gamma ** self.exponent

    def target(self) -> float:
        return self.trajectory.at(self.state.tick)

    def tick(self, density: float) -> None:
        """One control step: compare the measured density with the curve, move γ."""
        state = self.state
        state.tick += 1
        if density > self.trajectory.at(state.tick):
            state.gamma += self.step + state.integral_up
            state.integral_up += self.step / 4
            state.integral_down = 0.0
        else:
            if state.integral_up > 0:  # the error just changed sign: release the pressure built meanwhile
                state.gamma /= 2
            state.gamma = max(0.0, state.gamma - self.step - state.integral_down)
            state.integral_down += self.step / 4
            state.integral_up = 0.0

    def state_dict(self) -> dict[str, float]:
        return asdict(self.state)

    def load_state_dict(self, values: dict[str, float]) -> None:
        self.state = PressureState(**values)
