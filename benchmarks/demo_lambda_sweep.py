"""Accuracy against λ on the demo's task: LoRA-SIBO at several λ (λ = 0 is plain LoRA), several seeds.

    python benchmarks/demo_lambda_sweep.py --lambdas 0,0.1,0.2,0.3 --seeds 0,1 --out benchmarks/results/demo_sweep

Each (λ, seed) is one `sibo demo` run with the LoRA-SIBO method only, at the demo's default sizes
(the seed also draws the demo's data); finished runs are kept on a rerun; sweep.csv and sweep.png are written by `sibo.study.sweep`'s
writers, so they read like `sibo sweep`'s output.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from sibo.study.demo import RESULTS_FILE, DemoConfig, Row, run_demo
from sibo.study.sweep import CSV_FILE, PLOT_FILE, SweepRow, plot_accuracy, summarize, write_csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lambdas", default="0,0.1,0.2,0.3")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", default="benchmarks/results/demo_sweep")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out)
    rows = []
    for lam in [float(value) for value in args.lambdas.split(",")]:
        for seed in [int(value) for value in args.seeds.split(",")]:
            run_dir = out / "runs" / f"lam{lam:g}_seed{seed}"
            finished = run_dir / RESULTS_FILE
            if finished.is_file():  # rerun with more seeds or λ values: keep the runs already done
                row = Row(**json.loads(finished.read_text())["rows"][-1])
            else:
                config = DemoConfig(
                    output_dir=run_dir, methods=("lora-sibo",), lam=lam, seed=seed, analyze_n=16
                )
                row = run_demo(config)[-1]
            rows.append(
                SweepRow(lam, seed, {"synthetic": row.accuracy}, str(run_dir / "adapters" / "lora-sibo"))
            )
            print(f"λ={lam:g} seed {seed}: accuracy {row.accuracy:.3f}, last-layer similarity "
                  f"{row.last_layer_similarity:.4f}", flush=True)  # fmt: skip
            write_csv(rows, out / CSV_FILE)
    plot_accuracy(rows, out / PLOT_FILE)
    for lam, mean, std, count in summarize(rows):
        print(f"λ={lam:g}: {mean:.3f} ± {std:.3f} over {count} seeds")


if __name__ == "__main__":
    main()
