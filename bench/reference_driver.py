"""Seconds per 1024 training transitions of the reference code (awjuliani/deep-rl-plasticity),
its files unedited: run by ``bench_reference.py`` with a Python that has its ProcGen dependencies.

    python reference_driver.py CHECKOUT EPOCHS THREADS OVERRIDES_JSON [wall]   # prints one JSON line

It builds the reference's trainer from the checkout's hyperparams.yaml with OVERRIDES_JSON
applied (dotted keys, as the reference's own conditions are written), counts the transitions of
each epoch by wrapping the trainer's episode collection, and times ``trainer.train(epoch)`` with
``time.process_time`` (``time.perf_counter`` with ``wall``) from epoch 1 on: its epoch 0 would
run the test evaluation, and with a huge test_interval no later epoch does, so the figure is
training time only. The first epoch is a warm-up; the median of the rest is printed, as
``plasticity_lab.bench.time_epochs`` does for ours.
"""

import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import types

UNUSED = {
    "matplotlib": {}, "matplotlib.pyplot": {}, "shared.plotting": {"plot_result": None},
    "envs.gridworld": {"GridWorld": None}, "envs.bandits": {"ImageEnv": None},
}
"""Modules its runner imports that the ProcGen PPO path never calls (plotting, the gridworld and
image-bandit environments, which need matplotlib, torchvision and neuro-nav): stand-ins, so the
checkout runs with only its ProcGen dependencies installed."""


def stub_unused() -> None:
    for name, attrs in UNUSED.items():
        module = types.ModuleType(name)
        module.__dict__.update(attrs)
        sys.modules[name] = module


def main() -> None:
    checkout, epochs, threads, overrides = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    clock = time.perf_counter if sys.argv[5:] == ["wall"] else time.process_time
    checkout = os.path.abspath(checkout)
    sys.path.insert(0, checkout)
    import torch
    import yaml

    stub_unused()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from shared.runner import gen_trainer, update_hyperparams  # the reference's own functions

    torch.set_num_threads(threads)
    with open(os.path.join(checkout, "hyperparams.yaml")) as f:
        hyperparams = yaml.safe_load(f)
    for target, value in overrides.items():
        update_hyperparams(hyperparams, target, value)
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # its SummaryWriter writes under ./results
        log = io.StringIO()  # its per-epoch print lines (still formatted, as in its runs)
        with contextlib.redirect_stdout(log):
            trainer = gen_trainer(hyperparams, seed=0, descriptor="bench", base_path=os.path.join(tmp, "bench"))
        collected = [0]
        collect = trainer.batch_collect_episodes

        def counting(envs):
            episodes, lengths, returns = collect(envs)
            if envs is trainer.env:
                collected[0] += sum(lengths)
            return episodes, lengths, returns

        trainer.batch_collect_episodes = counting
        # Its per-epoch log reads the latest test return, which its epoch 0 would have made; a
        # placeholder instead, so no epoch runs the test evaluation.
        trainer.result_dict["test_r"].append(float("nan"))
        times, sizes = [], []
        for epoch in range(1, epochs + 2):
            before, t0 = collected[0], clock()
            with contextlib.redirect_stdout(log):
                trainer.train(epoch)
            seconds = clock() - t0
            sizes.append(collected[0] - before)
            times.append(seconds * 1024 / sizes[-1])
    print(json.dumps({
        "seconds_per_1024": statistics.median(times[1:]), "epoch_transitions": sizes[1:],
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
