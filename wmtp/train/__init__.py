"""Training: spec schema, the one loop, objectives, checkpoints, early stopping, schedule."""
