"""Training with the paper's recipe (Sect. 3.1): recipes, plateau schedule, checkpoints, the loop."""
