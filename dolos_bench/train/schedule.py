"""A run's learning-rate schedule, phase by phase, with its state in the resume checkpoint.

A recipe's ``schedule`` is one torch scheduler for the whole run (``constant``: none;
``plateau``: ``ReduceLROnPlateau`` stepped on the validation metric; ``cosine``:
``CosineAnnealingLR`` stepped once per epoch), or several in turn: ``schedule.phases`` start
other schedules at given step counts, as a two-stage run needs (MPC ``stage: both``: stage 1 on a
plateau schedule, stage 2 on a cosine one, each as in its own run). At a phase's ``from_step``
every param group's lr goes back to the value it started the run with (so a head with its own
lr, like MPC's ``stage2_lr``, keeps it) and the phase's scheduler starts from its beginning: a
cosine phase counts its epochs from its own first step and by default spans the epochs until the
next phase or the end of the run.

Resume: without phases the checkpoint holds the torch scheduler itself, as it always has, so
checkpoints of earlier runs still load; with phases it holds which phase is running, the groups'
starting lrs and that phase's scheduler state.
"""

from __future__ import annotations

import math
from typing import Any

from .recipe import LrScheduleFields, TrainRecipe

__all__ = ["LrSchedule"]


class LrSchedule:
    """The recipe's schedule on ``optimizer``; call :meth:`after_step` once per step, :meth:`on_validation` after each validation."""

    def __init__(self, recipe: TrainRecipe, optimizer: Any) -> None:
        self.optimizer = optimizer
        self.higher_is_better = recipe.validation.higher_is_better
        self.iterations_per_epoch = recipe.iterations_per_epoch
        section = recipe.schedule
        starts = [0] + [p.from_step for p in section.phases]
        ends = starts[1:] + [recipe.epochs * recipe.iterations_per_epoch]
        self.phases: list[tuple[int, int, LrScheduleFields]] = list(zip(starts, ends, [section, *section.phases]))
        self.base_lrs = [float(group["lr"]) for group in optimizer.param_groups]
        self.index = 0
        self.inner = self._scheduler(0)

    @property
    def current(self) -> LrScheduleFields:
        return self.phases[self.index][2]

    def _scheduler(self, index: int) -> Any:
        import torch

        start, end, fields = self.phases[index]
        if fields.name == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer, mode="max" if self.higher_is_better else "min", factor=fields.factor,
                patience=fields.patience, min_lr=fields.min_lr)
        if fields.name == "cosine":
            epochs = fields.period or max(1, math.ceil((end - start) / self.iterations_per_epoch))
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=epochs, eta_min=fields.min_lr)
        return None

    def checkpoint_object(self) -> Any:
        """What the resume checkpoint keeps: the torch scheduler for a one-phase schedule, else this."""
        return self if len(self.phases) > 1 else self.inner

    def on_validation(self, value: float | None) -> None:
        """Step a plateau phase on the validation metric (the same value on every process)."""
        if self.current.name == "plateau" and value is not None:
            self.inner.step(value)

    def after_step(self, steps_done: int) -> None:
        """Step a cosine phase at its epoch ends, then enter the next phase when it starts here."""
        start = self.phases[self.index][0]
        if self.current.name == "cosine" and (steps_done - start) % self.iterations_per_epoch == 0:
            self.inner.step()
        if self.index + 1 < len(self.phases) and steps_done >= self.phases[self.index + 1][0]:
            self._enter(self.index + 1)

    def _enter(self, index: int) -> None:
        for group, lr in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = lr
            group.pop("initial_lr", None)  # a new cosine phase anneals from the starting lr, not a stale one
        self.index = index
        self.inner = self._scheduler(index)

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "base_lrs": list(self.base_lrs),
                "inner": None if self.inner is None else self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # making a torch scheduler sets the groups' lr to its start; keep what the optimizer restored
        restored = [group["lr"] for group in self.optimizer.param_groups]
        self.index, self.base_lrs = int(state["index"]), [float(v) for v in state["base_lrs"]]
        self.inner = self._scheduler(self.index)
        if self.inner is not None and state["inner"] is not None:
            self.inner.load_state_dict(state["inner"])
        for group, lr in zip(self.optimizer.param_groups, restored):
            group["lr"] = lr
