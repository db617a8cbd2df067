"""Scoring on the paper's benchmarks: the runner, one module per task family, the lm-eval bridge."""
