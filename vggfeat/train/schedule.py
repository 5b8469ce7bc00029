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
