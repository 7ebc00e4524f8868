"""A population member's own random streams for the methods' draws, without the global RNG.

Methods draw during training: resets and ReDo re-initialise weights, (soft) shrink-and-perturb
adds fresh noise, CBP recycles units, plasticity injection builds fresh heads, Kron draws the noise
of its preconditioner fits. In a population each member must draw from its own stream only, so
that its draws do not depend on the other members (DESIGN.md section 8). :class:`Streams` holds a
member's ``torch.Generator`` for the CPU and, on a GPU, one for that device; a method passes
:meth:`Streams.on` to every draw (``uniform_(..., generator=)``, ``nn.init.*(generator=)``).

A member's streams start where the global RNG stands after its network and methods were built
(:meth:`Streams.split_from_global`), so a run draws the very numbers it drew when the loop swapped
the global RNG state per member; they are checkpointed with the run.

Code that draws from the global RNG and takes no generator (module constructors: injection's
fresh network; the kron-torch package's step, ``torch.randn_like`` on its update steps) runs
inside :meth:`Streams.keyed_global`: the global generators of the CPU and of the member's GPU are
forked, seeded from one draw of the member's stream, and restored after, so nothing outside the
block sees them and the block's draws are the member's.

Outside a runner (a method built by hand on one network) the streams are the global default
generators, so the method draws as torch's own functions would.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


class Streams:
    """One member's generators: ``cpu`` (weight draws mirror torch's initialisers, which draw on
    the CPU) and ``device`` (noise drawn where the parameters live; the same object on a CPU run).
    ``None``: the global default generator of that device."""

    def __init__(self, cpu: torch.Generator | None = None, device: torch.Generator | None = None) -> None:
        self.cpu, self.device = cpu, device

    @classmethod
    def split_from_global(cls, device: torch.device) -> Streams:
        """Generators that continue from the global RNG's current state (CPU, and ``device``'s
        when it is a GPU), leaving the global RNG as it is."""
        cpu = torch.Generator()
        cpu.set_state(torch.get_rng_state())
        if device.type != "cuda":
            return cls(cpu, cpu)
        gpu = torch.Generator(device=device)
        gpu.set_state(torch.cuda.get_rng_state(device))
        return cls(cpu, gpu)

    def on(self, device: torch.device | str) -> torch.Generator:
        """The generator for draws on ``device`` (a member lives on one GPU: its GPU generator
        serves any CUDA device named)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.cpu if self.cpu is not None else torch.default_generator
        if self.device is not None and self.device.device.type == device.type:
            return self.device
        if device.type == "cuda":
            return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
        raise ValueError(f"no random stream for device {device}")

    @contextlib.contextmanager
    def keyed_global(self, draw: bool = True) -> Iterator[None]:
        """Run library code that draws from the global RNG on a stream of this member's: the
        global generators of the CPU and of the member's GPU forked, seeded from one draw of
        :meth:`on` ("cpu"), restored on exit. ``draw=False``: the same fork, seeded with 0 and
        nothing drawn from the member (code whose draws are thrown away, e.g. rebuilding a
        structure before a checkpoint's weights are loaded over it)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self.on("cpu"))) if draw else 0
        gpu = self._gpu()
        with torch.random.fork_rng(devices=[gpu.device] if gpu is not None else []):
            torch.default_generator.manual_seed(seed)  # only the forked generators: never all GPUs
            if gpu is not None:
                torch.cuda.default_generators[gpu.device.index or 0].manual_seed(seed)
            yield

    def _gpu(self) -> torch.Generator | None:
        return self.device if self.device is not None and self.device is not self.cpu else None

    def state_dict(self) -> dict[str, Any]:
        """The generators' states (CPU byte tensors, as ``torch.get_rng_state`` gives), for the
        member's checkpoint."""
        gpu = self._gpu()
        return {"cpu": self.on("cpu").get_state(), "device": None if gpu is None else gpu.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`'s states (a GPU state only where the member has a GPU)."""
        self.on("cpu").set_state(state["cpu"].cpu())
        if state["device"] is not None and self.device is not None and self.device is not self.cpu:
            self.device.set_state(state["device"].cpu())
