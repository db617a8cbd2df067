"""The Trainer's progress piped to a file: a log line per tenth of the steps, with the time so far and the
rate, instead of tqdm's carriage-return line per step; on a terminal, transformers' own bar."""

from __future__ import annotations

import sys

from transformers.trainer_callback import ProgressCallback

from sibo.progress import bar


class LineProgressCallback(ProgressCallback):
    """ProgressCallback drawing its training bar with `sibo.progress.bar` (lines when piped); the loss logs
    it prints are upstream's."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = bar(total=state.max_steps, desc="training", unit="step")
        self.current_step = 0

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        """No bar for the validation batches: their loss is printed with the other logs when they end."""


def log_progress_when_piped(trainer) -> None:
    """The Trainer's bar as log lines when stderr is not a terminal."""
    if not sys.stderr.isatty():
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LineProgressCallback)
