"""Checkpoints in and out: load a base (HF folder, hub name or GGUF) with its adapter, check weights, export."""
