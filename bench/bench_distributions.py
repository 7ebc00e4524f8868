"""The policy's categorical distribution: one PPO minibatch's log-probs and entropy, forward and
backward, through ``plasticity_lab.distributions.Categorical`` (actions held first) against
``torch.distributions.Categorical`` (actions last), and the ratio of the two in this run.

A population minibatch is (K, batch_size, actions) logits: K = 30 members of the findings study
(batch 256, 4 actions), and 18 actions as in the ALE games.

    python bench/bench_distributions.py [--members 30] [--batch 256] [--repeats 300]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import distributions as D

from plasticity_lab.distributions import Categorical


def seconds_per_call(fn: Callable[[], None], repeats: int) -> float:
    for _ in range(repeats // 10):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def minibatch(make: Callable[[torch.Tensor], object], logits: torch.Tensor, actions: torch.Tensor) -> Callable[[], None]:
    """PPO's use of the distribution on one minibatch: log-probs and entropy, then backward."""

    def run() -> None:
        x = logits.detach().requires_grad_()
        dist = make(x)
        (dist.log_prob(actions).sum() + 0.01 * dist.entropy().sum()).backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    print("actions | torch.distributions ms | ours ms | torch.distributions / ours")
    for actions in (4, 18):
        logits = torch.randn(args.members, args.batch, actions, generator=gen)
        chosen = torch.randint(0, actions, (args.members, args.batch), generator=gen)
        theirs = seconds_per_call(minibatch(lambda x: D.Categorical(logits=x, validate_args=False), logits, chosen), args.repeats)
        ours = seconds_per_call(minibatch(Categorical, logits, chosen), args.repeats)
        print(f"{actions} | {theirs * 1e3:.3f} | {ours * 1e3:.3f} | {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
