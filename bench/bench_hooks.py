"""Per-step cost of the batched methods: one call over the population's stacked state against
one call per member on its module. The per-member calls are the one-network hooks, which run the
same batched code on a cohort of one (views of the member's tensors); before
interventions/cohort.py the loop called each member's own one-network code, whose operations were
the same per member, so the per-member column approximates the previous engine's hook cost.

For each condition and K, a population of the findings study's network (configs/gridworld_study.yaml)
is built, and the method's per-step hook (soft S&P's and NaP's ``after_step``, L2 Init's ``loss``
with its backward) is timed both ways on the same members, median of ``--repeats`` rounds of 50
calls each; the script prints milliseconds per step and the ratio (member by member / batched).
Both ways compute the same numbers (tests/test_cohort.py).

    python bench/bench_hooks.py [--members 8,30] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from plasticity_lab.config import load_study
from plasticity_lab.experiment.runner import Run
from plasticity_lab.interventions import LossContext

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gridworld_study.yaml"
CONDITIONS = {"ssp-ln": "after_step", "l2-init": "loss", "nap": "after_step"}
CALLS = 50


def population(condition: str, members: int, root: Path) -> Run:
    study = load_study(CONFIG)
    if condition == "nap":
        cfg = study.condition("layernorm").model_copy(deep=True)
        cfg.interventions = {"nap": {}}
    else:
        cfg = study.condition(condition).model_copy(deep=True)
    cfg.diagnostics.enabled = False
    dirs = [root / f"{condition}_{members}" / f"seed_{k}" for k in range(members)]
    for d in dirs:
        d.mkdir(parents=True)
    return Run(cfg, dirs, list(range(members)), device="cpu")


def timed(step) -> float:
    t0 = time.perf_counter()
    for _ in range(CALLS):
        step()
    return (time.perf_counter() - t0) / CALLS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", default="8,30")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; per-step hook time, {CALLS} calls x {args.repeats} rounds (median)")
    print("condition | hook | K | member by member | batched | ratio")
    with tempfile.TemporaryDirectory() as tmp:
        for condition, hook in CONDITIONS.items():
            for K in (int(k) for k in args.members.split(",")):
                run = population(condition, K, Path(tmp))
                slot = next(i for i, iv in enumerate(run.members[0].interventions) if iv.batched(hook))
                cohort = run.cohort(slot, range(K), {})
                obs = torch.zeros((8, *run.obs_shape))
                ctx = [LossContext(obs, torch.tensor(1.0), obs, m.gen) for m in run.members]

                def one_by_one() -> None:
                    if hook == "loss":
                        sum(m.interventions[slot].loss(m.model, ctx[k]) for k, m in enumerate(run.members)).backward()
                    else:
                        for m in run.members:
                            m.interventions[slot].after_step(m.model, run.optimizer_view(m))

                def batched() -> None:
                    iv = run.members[0].interventions[slot]
                    if hook == "loss":
                        iv.loss_members(cohort, ctx).backward()
                    else:
                        iv.after_step_members(cohort)

                rounds = {"member": [], "batched": []}
                for _ in range(args.repeats):
                    rounds["member"].append(timed(one_by_one))
                    rounds["batched"].append(timed(batched))
                member, batch = (statistics.median(rounds[k]) for k in ("member", "batched"))
                print(f"{condition} | {hook} | {K} | {1e3 * member:.2f} ms | {1e3 * batch:.2f} ms | {member / batch:.1f}x", flush=True)


if __name__ == "__main__":
    main()
