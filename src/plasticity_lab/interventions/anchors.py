"""Per-parameter reference values (initial weights, initial norms) for methods that pull towards them.

While training, values are keyed by the parameter object, so a parameter keeps its reference when
an injection moves it inside a wrapper head; checkpoints key them by parameter name, because the
objects differ after a restore. A trainable parameter first seen later (an injected head) gets its
reference at that moment, which is its initial value. Frozen parameters are skipped: no method
should pull on weights that do not learn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from plasticity_lab.nets.surgery import affine_weights


class ParamAnchors:
    """``reference(p)`` of every trainable parameter (or only affine weights), computed on first sight."""

    def __init__(self, model: nn.Module, reference: Callable[[torch.Tensor], torch.Tensor], weights_only: bool = False) -> None:
        self.model = model
        self.reference = reference
        self.weights_only = weights_only
        self.values: dict[nn.Parameter, torch.Tensor] = {}
        self.pending: dict[str, torch.Tensor] = {}
        self.pairs()

    @torch.no_grad()
    def pairs(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, its reference) for the model's current trainable parameters."""
        allowed = set(affine_weights(self.model)) if self.weights_only else None
        out = []
        for name, param in self.model.named_parameters():
            if not param.requires_grad or (allowed is not None and param not in allowed):
                continue
            if param not in self.values:
                stored = self.pending.pop(name, None)
                self.values[param] = stored.to(param.device) if stored is not None else self.reference(param.detach())
            out.append((param, self.values[param]))
        return out

    def state_dict(self) -> dict[str, Any]:
        # clones: in a population the values are views of the members' stacked anchors
        # (interventions.cohort), and saving a view would save the whole stack
        named = {name: self.values[p].clone() for name, p in self.model.named_parameters() if p in self.values}
        return {**self.pending, **named}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Runs before the model weights (and any rebuilt structure) are loaded: resolve names lazily.
        self.values = {}
        self.pending = dict(state)
