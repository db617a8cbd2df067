"""Studies built on the library: the demo, λ sweeps, over-smoothing analysis, statistics and plots."""
