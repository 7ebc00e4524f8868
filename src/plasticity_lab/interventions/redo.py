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
from plasticity_lab.interventions.cohort import Cohort
from plasticity_lab.metrics import dormant_scores
from plasticity_lab.nets.surgery import affine_weights, fresh_init, weight_param


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

    def periodic_members(self, cohort, obs, epoch):
        """Scores per member (a metric of one member's activations); the recycling of every
        member's dormant units at once, through unit masks on the stacked parameters."""
        if epoch == 0 or epoch % self.params.every:
            return [{} for _ in obs]
        with torch.no_grad():
            acts = [module.activations(o[: self.params.batch]) for module, o in zip(cohort.modules, obs)]
        totals = [0] * len(cohort)
        generators = cohort.generators("cpu")
        for i, link in enumerate(cohort.model.unit_links()):
            masks = []
            for j in range(len(cohort)):
                mask = torch.zeros(cohort.model.blocks[link.block].out_units, dtype=torch.bool, device=acts[j][i].device)
                with cohort.guard(j, "ReDo's dormancy scores"):
                    mask = dormant_scores(acts[j][i]).view(link.copies, -1).max(dim=0).values <= self.params.tau
                masks.append(mask)
                totals[j] += int(mask.sum())
            recycle_unit_masks(cohort, cohort.model.blocks[link.block], link, torch.stack(masks), generators)
        return [{} if cohort.positions[j] in cohort.failing else {"redo_reset_units": float(t)} for j, t in enumerate(totals)]


@torch.no_grad()
def recycle_unit_masks(
    cohort: Cohort, block: nn.Module, link, units: torch.Tensor, generators: list[torch.Generator | None],
    zero_bias: bool = False,
) -> None:
    """For each acting member j, re-initialise the incoming weights of the units where
    ``units[j]`` (bool, (n, units)) holds (and their bias: freshly drawn, or 0 with
    ``zero_bias``; norm scales 1, offsets 0), and zero what reads them downstream; their
    optimiser state is cleared. Member j draws a fresh layer from ``generators[j]`` (CPU; None:
    the global RNG) only when it has a unit to recycle, as its single run does. ``block`` and
    ``link.readers`` are modules of ``cohort.model``."""
    layer = block.layer
    weight_name = cohort.name(weight_param(layer))
    current = cohort.params[weight_name]
    fresh_weight = torch.zeros((len(cohort), *current.shape[1:]), dtype=current.dtype, device=current.device)
    fresh_bias = None if layer.bias is None else torch.zeros((len(cohort), *layer.bias.shape), dtype=current.dtype, device=current.device)
    for j, gen in enumerate(generators):
        if bool(units[j].any()):
            weight, bias = fresh_init(layer, gen)
            fresh_weight[j] = weight
            if fresh_bias is not None:
                fresh_bias[j] = bias
    if not bool(units.any()):
        return
    rows = units.view(*units.shape, *[1] * (current.dim() - 2))
    cohort.assign(weight_name, rows, fresh_weight)
    if layer.bias is not None:
        cohort.assign(cohort.name(layer.bias), units, 0.0 if zero_bias else fresh_bias)
    norm = block.norm
    if getattr(norm, "weight", None) is not None:
        cohort.assign(cohort.name(norm.weight), units.view(*units.shape, *[1] * (norm.weight.dim() - 1)), 1.0)
    if getattr(norm, "bias", None) is not None:
        cohort.assign(cohort.name(norm.bias), units.view(*units.shape, *[1] * (norm.bias.dim() - 1)), 0.0)
    # column (copy * units + u) * span + o of a reader is fed by unit u
    fed = units.repeat(1, link.copies).repeat_interleave(link.span, dim=1)
    for reader in link.readers:
        for weight in affine_weights(reader):
            cols = torch.zeros((len(cohort), weight.shape[1]), dtype=torch.bool, device=units.device)
            cols[:, : fed.shape[1]] = fed
            cohort.assign(cohort.name(weight), cols.view(len(cohort), 1, -1, *[1] * (weight.dim() - 2)), 0.0)


@torch.no_grad()
def recycle_units(
    block: nn.Module, link, units: torch.Tensor, optimizer: torch.optim.Optimizer | None,
    generator: torch.Generator | None = None, zero_bias: bool = False,
) -> None:
    """:func:`recycle_unit_masks` for one network's ``units`` (indices) of ``block`` (CBP's
    replacement), drawn from ``generator`` (CPU; None: the global RNG)."""
    owner = nn.ModuleDict({"block": block, "readers": nn.ModuleList(link.readers)})
    mask = torch.zeros((1, block.out_units), dtype=torch.bool, device=units.device)
    mask[0, units] = True
    recycle_unit_masks(Cohort.of_module(None, owner, optimizer), block, link, mask, [generator], zero_bias)
