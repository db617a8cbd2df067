"""The training recipe: its config, packing of sequences, and resuming from checkpoints."""
