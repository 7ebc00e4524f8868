"""Benchmark: seconds per 1024 transitions vs. the network-compute floor (same as `plab bench`).

    python bench/bench_epoch.py [--precision bf16] [--epochs 3] [--device cuda]
"""

import sys

from plasticity_lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
