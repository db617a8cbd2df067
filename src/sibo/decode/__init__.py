"""Decoding: settings, one streamed answer, batched answers, and the Gradio page."""
