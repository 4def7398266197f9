"""The conditional prior over RQ-VAE codes: an RQ-Transformer (Lee et al. 2022) in miniature.

Codes are (B, N, L): N = h·w grid positions in raster order, L residual levels each. The model
factorises p(codes | condition) position by position, and inside a position level by level:

- a **spatial** causal transformer reads the condition as prefix tokens (style, genre and a
  sinusoidal embedding of the 0–100 aesthetic score, as SDXL conditions on an aesthetic score)
  followed by one token per position: the sum of that position's L code embeddings. Its output
  after position t−1 (or after the prefix, for t = 0) is the context h_t of position t;
- a small **depth** causal transformer predicts the L codes of position t one level at a time:
  its input at depth d is h_t plus the sum of the embeddings of the levels already chosen
  (< d), plus a depth embedding; one classifier is shared across depths.

Each condition is replaced by its learned "null" embedding with probability `cond_dropout` in
training, so sampling can use classifier-free guidance on the logits (`squeezegen.rq.sampling`).

Written by hand (no library has a residual-depth transformer; nn.TransformerEncoder has no KV
cache): pre-LayerNorm blocks over `scaled_dot_product_attention`, with an optional KV cache for
one-position-at-a-time sampling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from squeezegen.model_folder import load_model_folder, save_model_folder

FORMAT = "squeezegen.prior/2"  # 2: score / SCORE_UNIT, condition on every position, FiLM
SCORE_FREQS = 128  # sinusoidal embedding of the score: 128 sines + 128 cosines (SDXL uses 256-d)
SCORE_UNIT = 10.0  # scores enter the embedding as score / 10: SDXL's aesthetic scores are on a 1–10 scale


@dataclass(frozen=True)
class PriorSpec:
    """Everything needed to rebuild a prior (saved as config.json)."""

    levels: int  # L residual levels per position
    codebook_size: int  # K codes per level
    positions: int  # N = h·w grid positions
    styles: tuple[str, ...]  # condition vocabularies, in index order
    genres: tuple[str, ...]
    width: int = 128  # d_model of the spatial transformer (and of the code embeddings)
    heads: int = 4
    spatial_layers: int = 4
    depth_width: int = 64  # d_model of the depth transformer: it runs on N·L tokens, the spatial one on N
    depth_layers: int = 1
    mlp_ratio: int = 4
    dropout: float = 0.0
    cond_every_position: bool = True  # also add the summed condition to every spatial token (not only as prefix)
    cond_modulation: bool = False  # FiLM the spatial blocks' LayerNorms with the condition (DiT's adaLN, without gates)
    grid_hw: tuple[int, int] = field(default=(0, 0))  # (h, w); (0, 0) = square
    kind: str = "rq_transformer"  # rq_transformer (RQPrior) | next_scale (squeezegen.rq.next_scale.NextScalePrior)
    scales: tuple[int, ...] = ()  # next_scale: the grid side of each level, coarse to fine

    @property
    def tokens(self) -> int:
        """Codes per image: N·L, or Σ side² over the scales."""
        return sum(s * s for s in self.scales) if self.scales else self.positions * self.levels

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "PriorSpec":
        values = dict(values)
        for key in ("styles", "genres", "grid_hw", "scales"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


class Block(nn.Module):
    """Pre-LN transformer block: causal self-attention (+ optional KV cache) and an MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.dropout = dropout

    def forward(
        self, x: torch.Tensor, cache: dict[str, torch.Tensor] | None = None, film: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, d) → (B, T, d). With `cache`, x holds the T newest tokens; keys and values of
        the earlier ones come from the cache, which is extended in place. `film` (B, 4, d): scale
        and shift of the two LayerNorms' outputs (1 + scale, + shift), from the condition. `mask`
        (T, past + T) bool, True = may attend: replaces the causal mask (block-causal attention)."""
        b, t, d = x.shape
        h = self.norm1(x)
        if film is not None:
            h = h * (1 + film[:, None, 0]) + film[:, None, 1]
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3×(B, H, T, dh)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        past = k.shape[2] - t
        if mask is not None:
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        elif past == 0:
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:  # new queries see every cached key and the new keys up to themselves
            mask = torch.ones(t, past + t, dtype=torch.bool, device=x.device).tril(diagonal=past)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        h = self.norm2(x)
        if film is not None:
            h = h * (1 + film[:, None, 2]) + film[:, None, 3]
        return x + self.mlp(h)


def score_embedding(score: torch.Tensor) -> torch.Tensor:
    """Sinusoidal features (B, 2·SCORE_FREQS) of scores (B,) on the 0–100 scale.

    The score is divided by SCORE_UNIT first, so the fastest feature turns once per ~63 points:
    on the raw 0–100 scale the fast features would give every training image's (unique) score
    its own code, which the prior memorizes instead of learning what a high score looks like
    (measured: asked for 80 vs 30, samples were judged the same)."""
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(SCORE_FREQS, device=score.device) / SCORE_FREQS)  # (F,)
    angles = (score.float() / SCORE_UNIT)[:, None] * freqs[None]  # (B, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)  # (B, 2F)


class ConditionedPrior(nn.Module):
    """What both priors share: the condition embeddings (style, genre, score, each with a learned
    null for dropout and guidance), the per-token condition bias and the FiLM parameters."""

    PREFIX = 3  # condition tokens: style, genre, score

    spec: PriorSpec
    film: nn.ModuleList | None

    def init_conditions(self, spec: PriorSpec, d: int) -> None:
        # index len(vocab) of each table is the "null" condition (dropped / unconditional)
        self.style_embed = nn.Embedding(len(spec.styles) + 1, d)
        self.genre_embed = nn.Embedding(len(spec.genres) + 1, d)
        self.score_proj = nn.Sequential(nn.Linear(2 * SCORE_FREQS, d), nn.SiLU(), nn.Linear(d, d))
        self.score_null = nn.Parameter(torch.zeros(d))

    @staticmethod
    def film_layers(spec: PriorSpec, d: int, blocks: int) -> nn.ModuleList | None:
        """Per block: condition (B, d) → (B, 4, d) scales and shifts, zero at init (= no modulation)."""
        if not spec.cond_modulation:
            return None
        layers = nn.ModuleList(nn.Linear(d, 4 * d) for _ in range(blocks))
        for layer in layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        return layers

    @property
    def null_style(self) -> int:
        return len(self.spec.styles)

    @property
    def null_genre(self) -> int:
        return len(self.spec.genres)

    def condition_tokens(self, style: torch.Tensor, genre: torch.Tensor, score: torch.Tensor, score_known: torch.Tensor) -> torch.Tensor:
        """Prefix (B, 3, d). style/genre: indices (B,) (the null index drops it); score (B,) 0–100
        with score_known (B,) bool (False drops it)."""
        s = self.score_proj(score_embedding(score).to(self.score_null.dtype))  # (B, d)
        s = torch.where(score_known[:, None], s, self.score_null.to(s.dtype).expand_as(s))
        return torch.stack([self.style_embed(style), self.genre_embed(genre), s], dim=1)  # (B, 3, d)

    def drop_conditions(self, style, genre, score_known, p: float, generator: torch.Generator | None = None):
        """Each condition independently replaced by null with probability p (training)."""
        if p <= 0:
            return style, genre, score_known
        drop = torch.rand(3, style.shape[0], generator=generator, device=style.device) < p  # (3, B)
        style = torch.where(drop[0], torch.full_like(style, self.null_style), style)
        genre = torch.where(drop[1], torch.full_like(genre, self.null_genre), genre)
        return style, genre, score_known & ~drop[2]

    def token_bias(self, prefix: torch.Tensor) -> torch.Tensor:
        """What every code token gets added (B, 1, d): the summed condition, or zero."""
        if not self.spec.cond_every_position:
            return prefix.new_zeros(prefix.shape[0], 1, prefix.shape[-1])
        return prefix.sum(dim=1, keepdim=True)

    def films(self, prefix: torch.Tensor, blocks: int) -> list[torch.Tensor | None]:
        """Per block: its FiLM parameters (B, 4, d) from the summed condition, or None."""
        if self.film is None:
            return [None] * blocks
        c = F.silu(prefix.sum(dim=1))  # (B, d)
        return [layer(c).view(c.shape[0], 4, -1) for layer in self.film]

    def loss(self, codes: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over every code."""
        logits = self(codes, prefix)  # (*codes.shape, K)
        return F.cross_entropy(logits.flatten(0, -2).float(), codes.flatten())


class RQPrior(ConditionedPrior):
    """p(codes | style, genre, score) over RQ-VAE codes (B, N, L)."""

    def __init__(self, spec: PriorSpec):
        super().__init__()
        self.spec = spec
        d, dd, levels, k = spec.width, spec.depth_width, spec.levels, spec.codebook_size
        self.code_embed = nn.ModuleList(nn.Embedding(k, d) for _ in range(levels))  # one table per level
        self.init_conditions(spec, d)
        self.spatial_pos = nn.Parameter(torch.zeros(self.PREFIX + spec.positions, d))
        self.depth_pos = nn.Parameter(torch.zeros(levels, dd))
        self.spatial = nn.ModuleList(Block(d, spec.heads, spec.mlp_ratio, spec.dropout) for _ in range(spec.spatial_layers))
        self.depth_in = nn.Linear(d, dd)  # context + chosen levels (width d) → the depth transformer's width
        self.depth = nn.ModuleList(Block(dd, spec.heads, spec.mlp_ratio, spec.dropout) for _ in range(spec.depth_layers))
        self.film = self.film_layers(spec, d, len(self.spatial))
        self.spatial_norm = nn.LayerNorm(d)
        self.head_norm = nn.LayerNorm(dd)
        self.head = nn.Linear(dd, k)  # shared across depths
        nn.init.normal_(self.spatial_pos, std=0.02)
        nn.init.normal_(self.depth_pos, std=0.02)

    # --------------------------------------------------------------------------- embeddings

    def embed_levels(self, codes: torch.Tensor) -> torch.Tensor:
        """Per-level code embeddings (B, N, L, d) of codes (B, N, L)."""
        return torch.stack([table(codes[..., lvl]) for lvl, table in enumerate(self.code_embed)], dim=2)

    def depth_inputs(self, context: torch.Tensor, level_embeds: torch.Tensor) -> torch.Tensor:
        """Depth-transformer input (B, N, L, dd): proj(h_t + Σ_{l<d} e_l) + depth embedding at depth d."""
        b, n, levels, d = level_embeds.shape
        # exclusive prefix sum, so level d's input holds no rounding trace of level d's own code
        chosen = F.pad(torch.cumsum(level_embeds, dim=2)[:, :, :-1], (0, 0, 1, 0))  # (B, N, L, d): sum of levels < d
        return self.depth_in(context[:, :, None] + chosen) + self.depth_pos[None, None, :levels]

    def run_depth(self, x: torch.Tensor) -> torch.Tensor:
        """Depth transformer over (B, N, L', dd) → logits (B, N, L', K), causal over levels."""
        b, n, levels, d = x.shape
        x = x.reshape(b * n, levels, d)
        for block in self.depth:
            x = block(x)
        return self.head(self.head_norm(x)).reshape(b, n, levels, -1)

    # --------------------------------------------------------------------------- training

    def forward(self, codes: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, N, L, K) for codes (B, N, L) given the condition prefix (B, 3, d)."""
        b, n, levels = codes.shape
        level_embeds = self.embed_levels(codes)  # (B, N, L, d)
        tokens = level_embeds.sum(dim=2) + self.token_bias(prefix)  # (B, N, d): one token per position
        x = torch.cat([prefix, tokens[:, :-1]], dim=1) + self.spatial_pos[None, : self.PREFIX + n - 1]  # (B, 3+N-1, d)
        for block, film in zip(self.spatial, self.films(prefix, len(self.spatial))):
            x = block(x, film=film)
        context = self.spatial_norm(x[:, self.PREFIX - 1 :])  # (B, N, d): h_t from the token before t
        return self.run_depth(self.depth_inputs(context, level_embeds))


# ------------------------------------------------------------------------------- save / load


PRIOR_KINDS = ("rq_transformer", "next_scale")


def build_prior(spec: PriorSpec) -> ConditionedPrior:
    """A fresh prior of the spec's kind."""
    if spec.kind == "next_scale":
        from squeezegen.rq.next_scale import NextScalePrior  # it builds on this module

        return NextScalePrior(spec)
    if spec.kind != "rq_transformer":
        raise ValueError(f"unknown prior kind {spec.kind!r}; one of {', '.join(PRIOR_KINDS)}")
    return RQPrior(spec)


def save_prior(model: ConditionedPrior, out_dir: str | Path, *, meta: dict[str, Any] | None = None) -> Path:
    """`out_dir/` = model.safetensors + config.json (spec + meta), written atomically."""
    return save_model_folder(model, out_dir, {"format": FORMAT, "spec": model.spec.to_json(), "meta": meta or {}})


def load_prior(model_dir: str | Path, device: torch.device | str = "cpu") -> ConditionedPrior:
    """The prior saved by `save_prior`, in eval mode on `device` (`model.meta` = config.json's meta)."""
    return load_model_folder(model_dir, lambda config: build_prior(PriorSpec.from_json(config["spec"])),
                             what="prior", fmt=FORMAT, stage="train_prior", device=device)
