"""The paper's learning-rate schedule (Sect. 3.1) as a pure function: lr /= 10 when validation top-1
stops improving, at most 3 times. The state is a small frozen record saved in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace


@dataclass(frozen=True)
class PlateauState:
    lr: float
    best: float = float("-inf")  # best validation top-1 so far
    bad_epochs: int = 0  # epochs since the best
    drops: int = 0  # lr decreases so far

    def to_dict(self) -> dict:
        return asdict(self)


# Not torch.optim.lr_scheduler.ReduceLROnPlateau: it drops at the same epochs only when set up as mode="max",
# threshold_mode="abs", patience one less than ours (it tolerates `patience` bad epochs; we drop at the
# `patience`-th), eps=0 (its default ignores any drop below 1e-8) and min_lr = lr x 0.1^3 for the 3 drops (it
# keeps no count); even then it multiplies by 0.1 where the paper divides by 10, so from lr 0.1 (and most others)
# it drops to 0.010000000000000002, not 0.01, and a run resumed from a checkpoint written here would change its lr
# in the last bit. tests/test_train_schedule.py runs both on the same accuracies, resumed and not.
def plateau_step(
    state: PlateauState,
    metric: float,
    *,
    patience: int = 1,
    factor: float = 10.0,
    max_drops: int = 3,
    threshold: float = 1e-4,
) -> PlateauState:
    """The state after one epoch whose validation top-1 is `metric` (higher is better).

    After `patience` epochs without an improvement of more than `threshold`, lr is divided by `factor`
    (unless `max_drops` is reached) and the count restarts.
    """
    if metric > state.best + threshold:
        return replace(state, best=metric, bad_epochs=0)
    bad = state.bad_epochs + 1
    if bad >= patience and state.drops < max_drops:
        return replace(state, lr=state.lr / factor, bad_epochs=0, drops=state.drops + 1)
    return replace(state, bad_epochs=bad)
