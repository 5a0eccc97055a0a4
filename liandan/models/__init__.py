"""Models: the ModelBundle every method trains on, loading/saving single-file checkpoints, the tiny model."""
