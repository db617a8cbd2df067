"""Early stopping on the validation metric: transformers' EarlyStoppingCallback, saying when and why it stopped.

The Trainer already keeps the best checkpoint (load_best_model_at_end), so the adapter saved at the end is
the best one, not the last; this module only turns the flags into the callback, carries its count of
evaluations without improvement across a resume, and names the stop.
"""

from __future__ import annotations

import logging

from transformers import EarlyStoppingCallback, TrainerCallback

logger = logging.getLogger(__name__)

# EarlyStoppingCallback's count of evaluations without improvement, as its checkpointed state names it
COUNTER = "early_stopping_patience_counter"


class LoggedEarlyStopping(EarlyStoppingCallback):
    """EarlyStoppingCallback that counts on from a resumed checkpoint and logs the step it stopped at, the
    metric's best value and its checkpoint."""

    def on_train_begin(self, args, state, control, **kwargs):
        """A resumed run counts on from the checkpoint's evaluations without improvement. Only the count is
        restored: Trainer's restore_callback_states_from_checkpoint would rebuild this callback with the
        checkpoint's patience and threshold, silently ignoring ones changed on resume."""
        super().on_train_begin(args, state, control, **kwargs)
        stored = (state.stateful_callbacks or {}).get(type(self).__name__)
        if isinstance(stored, dict):
            self.early_stopping_patience_counter = stored.get("attributes", {}).get(COUNTER, 0)

    def on_evaluate(self, args, state, control, metrics, **kwargs):
        super().on_evaluate(args, state, control, metrics, **kwargs)
        first = getattr(self, "stopped", None) is None  # the final trainer.evaluate() comes here again
        # The patience ran out before the last step: should_training_stop is also set by the last step itself
        # and by Ctrl-C, and the final evaluation of the best adapter after a full run counts one more.
        ran_out = self.early_stopping_patience_counter >= self.early_stopping_patience
        if ran_out and state.global_step < state.max_steps and first and state.is_world_process_zero:
            self.stopped = {"step": state.global_step, "metric": args.metric_for_best_model,
                            "best": state.best_metric, "best_checkpoint": state.best_model_checkpoint}  # fmt: skip
            logger.info(
                "stopped early at step %d: %s has not improved by more than %g for %d evaluations; best %s = %.6g "
                "(%s) becomes the final adapter",
                state.global_step,
                args.metric_for_best_model,
                self.early_stopping_threshold,
                self.early_stopping_patience,
                args.metric_for_best_model,
                state.best_metric,
                state.best_model_checkpoint or "not saved yet",
            )


def early_stopping(config) -> list[TrainerCallback]:
    """The callback for --early_stopping_patience / --early_stopping_threshold (none when patience is unset)."""
    if config.early_stopping_patience is None:
        return []
    return [LoggedEarlyStopping(config.early_stopping_patience, config.early_stopping_threshold)]


def stopped_early(trainer) -> dict | None:
    """{step, metric, best, best_checkpoint} when early stopping ended the run, else None."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, LoggedEarlyStopping):
            return getattr(callback, "stopped", None)
    return None
