"""ReDo (Sokar et al. 2023): periodically recycle dormant units.

Every ``every`` epochs, each hidden layer's units (conv: channels) are scored on a batch of recent
observations with the dormancy score of :func:`plasticity_lab.metrics.dormant_scores`; units with
score <= tau get fresh incoming weights, zero outgoing weights and cleared Adam moments.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from plasticity_lab.interventions.base import Intervention, Params, register
from plasticity_lab.metrics import dormant_scores
from plasticity_lab.nets.surgery import affine_weights, assign, fresh_init, weight_param


class RedoParams(Params):
    tau: float = Field(0.025, ge=0)
    """Dormancy threshold on the normalised score."""
    every: int = Field(10, ge=1)
    """Recycle every this many epochs."""
    batch: int = Field(256, ge=1)
    """Recent observations used for scoring."""


@register
class Redo(Intervention):
    name = "redo"
    edits_weights = True
    Params = RedoParams
    stat_keys = ("redo_reset_units",)

    def periodic(self, model, optimizer, obs, epoch):
        if epoch == 0 or epoch % self.params.every:
            return {}
        with torch.no_grad():
            acts = model.activations(obs[: self.params.batch])
        total = 0
        for link, act in zip(model.unit_links(), acts):
            scores = dormant_scores(act).view(link.copies, -1).max(dim=0).values
            dormant = torch.nonzero(scores <= self.params.tau).flatten()
            if dormant.numel():
                recycle_units(model.blocks[link.block], link, dormant, optimizer, self.streams.on("cpu"))
            total += dormant.numel()
        return {"redo_reset_units": float(total)}


@torch.no_grad()
def recycle_units(
    block: nn.Module, link, units: torch.Tensor, optimizer: torch.optim.Optimizer | None,
    generator: torch.Generator | None = None, zero_bias: bool = False,
) -> None:
    """Re-initialise the incoming weights of ``units`` (and their bias: freshly drawn, or 0 with
    ``zero_bias``), drawn from ``generator`` (CPU; None: the global RNG), and zero what reads them
    downstream."""
    layer = block.layer
    weight, bias = fresh_init(layer, generator)
    assign(weight_param(layer), (units,), weight[units], optimizer)
    if layer.bias is not None:
        assign(layer.bias, (units,), 0.0 if zero_bias else bias[units], optimizer)
    norm = block.norm
    if getattr(norm, "weight", None) is not None:
        assign(norm.weight, (units,), 1.0, optimizer)
    if getattr(norm, "bias", None) is not None:
        assign(norm.bias, (units,), 0.0, optimizer)
    units_total = block.out_units
    offsets = torch.arange(link.span, device=units.device)
    for copy in range(link.copies):
        cols = ((copy * units_total + units).unsqueeze(1) * link.span + offsets).flatten()
        for reader in link.readers:
            for weight in affine_weights(reader):
                assign(weight, (slice(None), cols), 0.0, optimizer)
