"""Image geometry shared by training, evaluation and extraction (Sect. 3.1-3.2)."""
from __future__ import annotations


def isotropic_size(height: int, width: int, smallest_side: int) -> tuple[int, int]:
    """(H, W) after an isotropic rescale that makes the smallest side exactly `smallest_side` (S or Q)."""
    if height <= 0 or width <= 0 or smallest_side <= 0:
        raise ValueError(f"sizes must be positive, got {height}x{width} -> {smallest_side}")
    if height <= width:
        return smallest_side, max(smallest_side, round(width * smallest_side / height))
    return max(smallest_side, round(height * smallest_side / width)), smallest_side
