#!/usr/bin/env python
"""Study-report-compatible entry point: python train.py -n NAME -p hyperparams_quick.yaml [-c COND] [-s SEED] [-o OUT] [-r]."""

import sys

from plasticity_lab.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
