"""Each member's own random streams (plasticity_lab.streams): the methods draw from them, never
from the global RNG, so no member's draws depend on another's and training leaves the global RNG
as it found it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from plasticity_lab.experiment.identity import run_differences
from plasticity_lab.experiment.runner import Run
from plasticity_lab.interventions import REGISTRY
from plasticity_lab.nets.surgery import FreshDraw, fresh_init
from plasticity_lab.streams import Streams
from tests.conftest import interrupt_at
from tests.test_population import METHODS, config

pytestmark = pytest.mark.usefixtures("one_thread")

DRAWING = ["reset", "shrink_perturb", "soft_shrink_perturb", "redo", "cbp", "inject", "kron"]
"""The methods that draw during training (Parseval draws only at construction, before a member's
streams are split off)."""


def test_split_streams_continue_the_global_stream_and_leave_it_alone():
    torch.manual_seed(11)
    state = torch.get_rng_state()
    streams = Streams.split_from_global(torch.device("cpu"))
    assert streams.on("cpu") is streams.on(torch.device("cpu"))
    mine = torch.rand(5, generator=streams.on("cpu"))
    assert torch.equal(torch.get_rng_state(), state)  # the split drew nothing from the global RNG
    assert torch.equal(mine, torch.rand(5))  # ... and continues exactly where it stood


def test_unbound_streams_are_the_global_generators():
    assert Streams().on("cpu") is torch.default_generator


def test_keyed_global_draws_from_the_member_and_restores_the_global_rng():
    torch.manual_seed(3)
    outside = torch.get_rng_state()
    a, b = (Streams(torch.Generator().manual_seed(7)) for _ in range(2))
    other = Streams(torch.Generator().manual_seed(8))
    draws = []
    for streams in (a, b, other):
        with streams.keyed_global():
            draws.append(torch.rand(4))
    assert torch.equal(torch.get_rng_state(), outside)
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    with a.keyed_global():  # the member's stream moved on: the next block draws anew
        assert not torch.equal(torch.rand(4), draws[0])
    state = a.on("cpu").get_state()
    with a.keyed_global(draw=False):  # a replay: the same fork, nothing drawn from the member
        torch.rand(4)
    assert torch.equal(a.on("cpu").get_state(), state) and torch.equal(torch.get_rng_state(), outside)


@pytest.mark.parametrize("layer", [nn.Linear(7, 5), nn.Linear(6, 2, bias=False), nn.Conv2d(3, 4, 3, 2, 1)],
                         ids=["linear", "no-bias", "conv"])
def test_fresh_init_from_a_generator_is_what_a_constructor_draws(layer):
    """The same numbers torch's own constructor draws from the same state (so a run's
    re-initialisations did not change when they moved off the global RNG)."""
    torch.manual_seed(5)
    gen = torch.Generator()
    gen.set_state(torch.get_rng_state())
    weight, bias = fresh_init(layer, gen)
    if isinstance(layer, nn.Conv2d):
        twin = nn.Conv2d(3, 4, 3, 2, 1)
    else:
        twin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    assert torch.equal(weight, twin.weight)
    assert (bias is None and twin.bias is None) or torch.equal(bias, twin.bias)
    draw = FreshDraw(layer.weight, bound=0.3)
    state = gen.get_state()
    first = draw.fill_(torch.empty(layer.weight.shape), gen)
    gen.set_state(state)
    assert torch.equal(first, draw.fill_(torch.empty(layer.weight.shape), gen)) and first.abs().max() <= 0.3


def test_every_drawing_method_is_listed():
    """A method that edits weights draws fresh values in this project (or shrinks toward an
    anchor); the ones here are all the methods whose hooks or construction draw."""
    assert {n for n, cls in REGISTRY.items() if cls.edits_weights} - {"nap"} <= set(DRAWING)
    assert all(REGISTRY[n].optimizer_draws == (n == "kron") for n in REGISTRY)


@pytest.mark.parametrize("name", DRAWING)
def test_training_never_touches_the_global_rng(tmp_path, name):
    """A population of two with a method that draws, through its shift: the global RNG's state is
    the same before and after training (every draw came from a member's own streams)."""
    if name == "kron":
        pytest.importorskip("kron_torch")
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    run = Run(config({name: METHODS[name]}), dirs, [0, 1], device="cpu")
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    assert run.train() == "done"
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("name", ["inject", "kron", "soft_shrink_perturb"])
def test_killed_and_resumed_streams_draw_as_the_uninterrupted_run(tmp_path, name):
    """The streams are checkpointed: a population stopped after its shift and resumed draws what
    the uninterrupted one draws (injection rebuilds its heads on resume without drawing)."""
    if name == "kron":
        pytest.importorskip("kron_torch")
    cfg = config({name: METHODS[name]}, num_epochs=4, shift_points=[1, 3])
    cfg.experiment.save_freq = 1
    full = [tmp_path / "full" / s for s in ("a", "b")]
    cut = [tmp_path / "cut" / s for s in ("a", "b")]
    for d in (*full, *cut):
        d.mkdir(parents=True)
    assert Run(cfg, full, [0, 1], device="cpu").train() == "done"
    stopped = Run(cfg, cut, [0, 1], device="cpu")
    interrupt_at(stopped, 2)
    resumed = Run(cfg, cut, [0, 1], device="cpu")
    assert resumed.train(resumed.load_resume_state()) == "done"
    assert resumed.start_epoch == 2  # it continued from the checkpoint, not from the start
    for a, b in zip(full, cut):
        assert run_differences(a, b) == []
