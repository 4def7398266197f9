"""The next-scale prior: VAR (Tian et al. 2024) in miniature, over a pyramid RQ-VAE's codes.

Codes are tokens (B, T), T = Σ s_k²: scale 1 (the coarsest s_1 × s_1 grid) first, each scale in
raster order (`RQVAE.to_tokens`). One transformer reads

    [style, genre, score] [scale 1 inputs] [scale 2 inputs] … [scale L inputs]

with **block-causal** attention: a token sees the condition and every token of its own and the
coarser scales, never a finer one. The input of scale k is what the coarser scales have drawn
so far: the sum of their code embeddings, each upsampled to the full grid, pooled to scale k's
grid (VAR interpolates its cumulative latent the same way); scale 1 starts from nothing. Each
scale-k token predicts the code at its own position of scale k, so sampling draws a whole scale
per forward pass (`squeezegen.rq.sampling`), L passes in all, with a KV cache across scales.

The condition enters three ways, as in the RQ-Transformer: prefix tokens, added to every token,
and FiLM on every block's LayerNorms (VAR's adaptive layer norm, without gates). Condition
dropout in training gives the nulls that classifier-free and score guidance use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from squeezegen.rq.prior import Block, ConditionedPrior, PriorSpec


def scale_of_token(scales: tuple[int, ...]) -> torch.Tensor:
    """(T,) the scale index (0-based) of every token."""
    return torch.cat([torch.full((s * s,), k) for k, s in enumerate(scales)])


def block_causal_mask(scales: tuple[int, ...], prefix: int) -> torch.Tensor:
    """(prefix + T, prefix + T) bool, True = may attend: a token sees its own and every coarser
    block; the condition prefix is block 0."""
    block = torch.cat([torch.zeros(prefix, dtype=torch.long), scale_of_token(scales) + 1])
    return block[None, :] <= block[:, None]


class NextScalePrior(ConditionedPrior):
    """p(tokens | style, genre, score) over a pyramid of code maps, one scale per pass."""

    def __init__(self, spec: PriorSpec):
        super().__init__()
        if not spec.scales or len(spec.scales) != spec.levels:
            raise ValueError(f"a next-scale prior needs one grid side per level ({spec.levels}), got {spec.scales}")
        self.spec = spec
        d, k = spec.width, spec.codebook_size
        self.code_embed = nn.ModuleList(nn.Embedding(k, d) for _ in spec.scales)  # one table per scale
        self.init_conditions(spec, d)
        tokens = spec.tokens
        self.pos = nn.Parameter(torch.zeros(self.PREFIX + tokens, d))  # absolute position in the sequence
        self.scale_embed = nn.Parameter(torch.zeros(len(spec.scales), d))  # which scale a token belongs to
        self.blocks = nn.ModuleList(Block(d, spec.heads, spec.mlp_ratio, spec.dropout) for _ in range(spec.spatial_layers))
        self.film = self.film_layers(spec, d, len(self.blocks))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, k)
        nn.init.normal_(self.pos, std=0.02)
        nn.init.normal_(self.scale_embed, std=0.02)
        self.register_buffer("mask", block_causal_mask(spec.scales, self.PREFIX), persistent=False)
        self.register_buffer("token_scale", scale_of_token(spec.scales), persistent=False)

    @property
    def full_side(self) -> int:
        return self.spec.scales[-1]

    def split(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Tokens (B, T, …) → one (B, s_k², …) piece per scale."""
        return list(torch.split(tokens, [s * s for s in self.spec.scales], dim=1))

    def code_map(self, codes: torch.Tensor, scale: int) -> torch.Tensor:
        """Embeddings of one scale's codes (B, s²), upsampled to the full grid: (B, d, S, S)."""
        side = self.spec.scales[scale]
        grid = rearrange(self.code_embed[scale](codes), "b (h w) d -> b d h w", h=side)
        if side == self.full_side:
            return grid
        return F.interpolate(grid, size=(self.full_side,) * 2, mode="bilinear", align_corners=False)

    def scale_input(self, cumulative: torch.Tensor | None, scale: int, batch: int) -> torch.Tensor:
        """Inputs (B, s², d) of `scale`: the cumulative map of the coarser scales pooled to its grid."""
        side = self.spec.scales[scale]
        if cumulative is None:  # the first scale has nothing to look at but the condition
            return self.pos.new_zeros(batch, side * side, self.spec.width)
        pooled = F.adaptive_avg_pool2d(cumulative, side)  # (B, d, s, s)
        return rearrange(pooled, "b d h w -> b (h w) d")

    def embed_inputs(self, pieces: list[torch.Tensor], prefix: torch.Tensor, first: int) -> torch.Tensor:
        """Transformer inputs (B, n, d) of scale inputs `pieces` (starting at scale `first`): + the
        condition bias, the scale embedding and the absolute positions."""
        x = torch.cat(pieces, dim=1) + self.token_bias(prefix)
        start = sum(s * s for s in self.spec.scales[:first])
        n = x.shape[1]
        return x + self.scale_embed[self.token_scale[start : start + n]] + self.pos[self.PREFIX + start : self.PREFIX + start + n]

    def teacher_inputs(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Every scale's input (B, s_k², d) from the true codes of the coarser scales."""
        b = tokens.shape[0]
        inputs, cumulative = [], None
        for scale, codes in enumerate(self.split(tokens)):
            inputs.append(self.scale_input(cumulative, scale, b))
            cumulative = self.code_map(codes, scale) if cumulative is None else cumulative + self.code_map(codes, scale)
        return inputs

    def run(self, x: torch.Tensor, prefix: torch.Tensor, *, past: int = 0, caches: list[dict] | None = None) -> torch.Tensor:
        """The blocks over x (B, n, d), the tokens at sequence positions past..past+n, with the
        block-causal mask (and KV caches holding the first `past`): normalised outputs (B, n, d)."""
        n = x.shape[1]
        mask = self.mask[past : past + n, : past + n]
        for block, film, cache in zip(self.blocks, self.films(prefix, len(self.blocks)), caches or [None] * len(self.blocks)):
            x = block(x, cache, film, mask=mask)
        return self.norm(x)

    def forward(self, tokens: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, K) for tokens (B, T) given the condition prefix (B, 3, d)."""
        x = torch.cat([prefix + self.pos[: self.PREFIX], self.embed_inputs(self.teacher_inputs(tokens), prefix, 0)], dim=1)
        return self.head(self.run(x, prefix)[:, self.PREFIX :])
