"""One module per artifact format: embedding, hypernetwork, lora, checkpoint, aesthetic."""
