"""The one training loop (Accelerate) and what it needs: optimizers, lr schedules, checkpoints, logs."""
