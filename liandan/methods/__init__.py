"""One file per training method: what is trainable, the loss, what is saved."""
