"""The conv64 actor-critic of the reference paper, built so interventions can find its layers.

The encoder is a list of :class:`Block` (layer -> norm -> activation); ``Block.out_units`` is the
number of units (channels for conv) that ReDo-style methods score, and ``ActorCritic.unit_links``
says which parameters read each block's units, so a unit can be reset without knowing the
architecture.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from plasticity_lab.distributions import ActionDistribution, make_distribution
from plasticity_lab.nets.layers import (
    affine, compute_dtype, make_activation, make_norm, member_invariant_linear, spectral_norm, width_factor,
)
from plasticity_lab.nets.normalization import ObsNormalizer

if TYPE_CHECKING:  # the config imports the networks' users, never the reverse at run time
    from plasticity_lab.config import ModelConfig

OBS_SHAPE = (64, 64, 3)


class Block(nn.Module):
    """One hidden layer: affine map, optional norm, activation."""

    def __init__(self, layer: nn.Module, norm: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.layer, self.norm, self.act = layer, norm, act

    @property
    def out_units(self) -> int:
        return self.layer.out_channels if isinstance(self.layer, nn.Conv2d) else self.layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(affine(self.layer, x)))


@dataclass(frozen=True)
class UnitLink:
    """Block ``block`` has ``units`` units; unit u feeds input columns [u*span, (u+1)*span) of
    each layer in ``readers`` (span > 1 where a conv map is flattened; ``copies`` > 1 where a
    concatenating activation doubles the features: copy c of unit u sits at c*units + u)."""

    block: int
    readers: tuple[nn.Module, ...]
    span: int
    copies: int


class ActorCritic(nn.Module):
    """Shared encoder trunk with a policy head and a value head.

    Encoders: ``conv64`` (the reference's ProcGen network: 4 convs 32-64-128-128, kernel 4,
    stride 2, then dense h), ``nature`` (Mnih et al. 2015's Atari network: convs 32 8x8/4,
    64 4x4/2, 64 3x3/1, then dense h; h = 512 in the paper), ``conv11`` (small grids: 3x3 convs
    32 (stride 1) and 64 (stride 2), then dense h) and ``mlp`` (flattened image or observation
    vector -> dense h -> dense h).

    Image observations are uint8 (N, H, W, C) scaled to [0, 1]; vector observations (N, D) go
    through running standardisation (:class:`ObsNormalizer`, ``obs_norm``). The policy head
    gives logits (discrete actions) or means (``continuous``; ``log_std`` is then a
    state-independent parameter); :meth:`distribution` turns its output into the action
    distribution.
    """

    CONV_SPECS = {  # (out channels, kernel, stride, padding)
        "conv64": [(32, 4, 2, 1), (64, 4, 2, 1), (128, 4, 2, 1), (128, 4, 2, 1)],
        "nature": [(32, 8, 4, 0), (64, 4, 2, 0), (64, 3, 1, 0)],
        "conv11": [(32, 3, 1, 1), (64, 3, 2, 1)],
        "minatar": [(16, 3, 1, 0)],
        "mlp": [],
    }

    def __init__(
        self,
        cfg: ModelConfig,
        num_actions: int,
        obs_shape: tuple[int, ...] = OBS_SHAPE,
        continuous: bool = False,
        obs_clip: float = 10.0,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_actions = num_actions
        self.obs_shape = tuple(obs_shape)
        self.continuous = continuous
        image = len(self.obs_shape) == 3
        if not image and self.CONV_SPECS[cfg.enc_type]:
            raise ValueError(f"model.enc_type {cfg.enc_type!r} needs image observations, got shape {self.obs_shape}")
        factor = width_factor(cfg.activation)
        hidden = cfg.h_size // factor
        blocks: list[Block] = []
        in_ch, size = (obs_shape[2], obs_shape[0]) if image else (0, 0)
        for out_ch, kernel, stride, pad in self.CONV_SPECS[cfg.enc_type]:
            ch = out_ch // factor
            size = (size + 2 * pad - kernel) // stride + 1
            blocks.append(
                Block(
                    nn.Conv2d(in_ch, ch, kernel_size=kernel, stride=stride, padding=pad),
                    make_norm(cfg.norm, (ch, size, size)),
                    make_activation(cfg.activation, cfg.leaky_slope),
                )
            )
            in_ch = ch * factor
        self.num_conv = len(blocks)
        self.spatial = size * size
        if blocks and size <= 0:
            raise ValueError(f"model.enc_type {cfg.enc_type!r} does not fit {self.obs_shape[0]}x{self.obs_shape[1]} frames")
        flat = in_ch * self.spatial if blocks else math.prod(self.obs_shape)
        dense_in = [flat] + ([hidden * factor] if cfg.enc_type == "mlp" else [])
        for width_in in dense_in:
            blocks.append(
                Block(
                    nn.Linear(width_in, hidden),
                    make_norm(cfg.norm, (hidden,)),
                    make_activation(cfg.activation, cfg.leaky_slope),
                )
            )
        self.flat_dim = flat
        self.blocks = nn.ModuleList(blocks)
        self.feature_dim = hidden * factor
        self.policy = nn.Linear(self.feature_dim, num_actions)
        self.value = nn.Linear(self.feature_dim, 1)
        self.log_std = nn.Parameter(torch.zeros(num_actions)) if continuous else None
        self.obs_norm = None if image else ObsNormalizer(self.obs_shape, obs_clip)
        self._apply_spectral_norm(cfg.spectral_norm)
        self.injected: nn.Module | None = None
        """Earlier head networks frozen by plasticity injection (interventions/inject.py), called as
        ``injected(trunk_input, logits, value)`` to add their outputs to the heads'; None until then."""

    def _apply_spectral_norm(self, scope: str) -> None:
        targets = {
            "none": [],
            "encoder": [b.layer for b in self.blocks],
            "all": [b.layer for b in self.blocks] + [self.policy, self.value],
            "penultimate": [self.blocks[-1].layer],
        }[scope]
        for layer in targets:
            spectral_norm(layer)

    @property
    def heads(self) -> tuple[nn.Module, nn.Module]:
        return self.policy, self.value

    def unit_links(self) -> list[UnitLink]:
        """Who reads each block's units (for unit-level resets such as ReDo and CBP)."""
        copies = width_factor(self.cfg.activation)
        links = []
        for i, block in enumerate(self.blocks):
            if i + 1 < len(self.blocks):
                nxt = self.blocks[i + 1].layer
                span = self.spatial if isinstance(nxt, nn.Linear) and isinstance(block.layer, nn.Conv2d) else 1
                readers = (nxt,)
                if i + 2 == len(self.blocks) and self.injected is not None:  # frozen trunk layers read it too
                    readers += tuple(self.injected.input_layers())
                links.append(UnitLink(i, readers, span, copies))
            else:
                links.append(UnitLink(i, tuple(self.heads), 1, copies))
        return links

    def follow_input_order(self, perm: Sequence[int] | None) -> None:
        """The environment now shows vector input entry j as its raw feature ``perm[j]`` (a
        ``permute`` shift; None: unpermuted): the running statistics follow their features.
        Image inputs carry no statistics, so nothing changes for them."""
        if self.obs_norm is not None:
            self.obs_norm.set_order(perm)

    def preprocess(self, obs: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, C) frames -> float (N, C, H, W) in [0, 1], flattened to (N, C*H*W) for
        an MLP encoder; vectors -> standardised."""
        if self.obs_norm is not None:
            return self.obs_norm(obs)
        frames = obs.permute(0, 3, 1, 2)
        if self.num_conv == 0:  # flattened while uint8: the copy moves a quarter of the bytes
            frames = frames.flatten(1)
        return frames.float().div_(255.0)

    def distribution(self, head_out: torch.Tensor) -> ActionDistribution:
        """The action distribution of the policy head's output (logits or means)."""
        return make_distribution(head_out, self.log_std)

    def trunk(self, obs: torch.Tensor) -> torch.Tensor:
        return self.activations(obs)[-1]

    def activations(self, obs: torch.Tensor) -> list[torch.Tensor]:
        """Post-activation outputs of every block (conv maps, then dense features; the last one
        is the trunk output the heads read)."""
        outs = []
        x = self.preprocess(obs)
        for i, block in enumerate(self.blocks):
            if i == self.num_conv:
                x = x.flatten(1)  # conv maps -> one vector (a view for an MLP's input)
            x = block(x)
            outs.append(x)
        return outs

    def outputs(self, acts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, value) from the blocks' activations (for probes that already computed them).

        The heads (and injected heads) always run in fp32: in bf16 (autocast, or :func:`compute_dtype`) only the encoder is
        bf16, because a bf16 value has a spacing of 0.0625 for |V| in [8, 16), coarser than
        ProcGen's -0.01 step reward.
        """
        def full(x: torch.Tensor) -> torch.Tensor:  # bf16 encoder output -> fp32; fp32/fp64 kept
            return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x

        with torch.autocast(acts[-1].device.type, enabled=False), compute_dtype(None):
            features = full(acts[-1])
            logits, value = member_invariant_linear(self.policy, features), member_invariant_linear(self.value, features)
            if self.injected is not None:
                logits, value = self.injected(full(acts[-2].flatten(1)), logits, value)
            return logits, value.squeeze(-1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (policy head output, value, trunk features); see :meth:`distribution`."""
        acts = self.activations(obs)
        return *self.outputs(acts), acts[-1]


def build_model(
    cfg: ModelConfig, num_actions: int, obs_shape: tuple[int, ...] = OBS_SHAPE, continuous: bool = False, obs_clip: float = 10.0
) -> ActorCritic:
    return ActorCritic(cfg, num_actions, obs_shape, continuous, obs_clip)
