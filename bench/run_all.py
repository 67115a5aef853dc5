"""Run every benchmark in one process run, so all ratios come from the same machine state.

    python bench/run_all.py            (make bench)
"""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
RUNS = [
    ["bench_matrix.py"],
    ["bench_acas.py", "--timeout", "5"],
    ["bench_throughput.py"],
    ["bench_soundness_cost.py"],
    ["bench_head.py", "--threads", "1", "--lirpa-methods", "ibp,crown"],
    ["bench_head.py", "--threads", "1", "--eps", "0.5", "--lirpa-methods", "crown"],
    ["bench_decoder.py"],
    ["bench_scaling.py"],
    ["bench_falsify.py"],
]

if __name__ == "__main__":
    rc = 0
    for args in RUNS:
        print(f"\n$ python bench/{' '.join(args)}", flush=True)
        rc |= subprocess.call([sys.executable, str(HERE / args[0]), *args[1:]])
    sys.exit(rc)
