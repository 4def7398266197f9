"""Sampling codes from either prior: conditions by name, classifier-free guidance, KV cache.

    codes = sample_codes(prior, styles=["Cubism"] * 16, genres=["portrait"] * 16, scores=[80.0] * 16, seed=0)
    images = rqvae.decode_indices(codes)            # RQ-Transformer: codes (B, N, L)
    images = rqvae.decode_indices(rqvae.from_tokens(codes))  # next-scale prior: tokens (B, T)

An RQ-Transformer draws one code per pass (position by position, level by level); a next-scale
prior draws every code of a scale per pass, scale by scale.

Guidance works on the logits, as in LlamaGen / MaskGIT: the batch runs twice, with the
conditions and with all three dropped (the null embeddings the prior learned with
`cond_dropout`), and logits = uncond + s·(cond − uncond): s = 1 is plain conditional sampling,
s = 0 is unconditional, s > 1 sharpens the condition. Every branch takes the same sampled code.

The aesthetic score gets a guidance of its own along the score axis (`score_guidance_scale`,
0 = off), as InstructPix2Pix gives its two conditions separate scales: a third branch keeps style
and genre and asks for the score reflected through the middle of the scale (100 − s), and
logits += s_score·(cond − cond at 100 − s), a negative prompt made of the opposite score. The
score's pull on any one code is small next to style's (a score is a global trait: contrast,
clutter), which plain guidance leaves too weak to show (toy: samples asked for 80 and for 30 were
judged alike). Asked for 50, or with no score, the third branch equals the first and changes nothing.
Same seed, same settings → the same codes (one torch.Generator drives every draw).
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from squeezegen.data.captions import name_key
from squeezegen.errors import UserError
from squeezegen.rq.next_scale import NextScalePrior
from squeezegen.rq.prior import ConditionedPrior, RQPrior

MIRROR = 100.0  # score guidance pushes away from the score reflected through the middle of the 0–100 scale


def _lookup(kind: str, names: Sequence[str], name: str | None) -> int | None:
    """Index of `name` in `names`, matching LAPIS spellings and lower-case words alike."""
    if name is None:
        return None
    by_key = {name_key(n): i for i, n in enumerate(names)}
    index = by_key.get(name_key(name))
    if index is None:
        raise UserError(f"unknown {kind} {name!r}; the prior knows: {', '.join(names)}")
    return index


def resolve_conditions(
    prior: ConditionedPrior, styles: Sequence[str | None], genres: Sequence[str | None], scores: Sequence[float | None]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Names and scores (None = unconditional in that respect) → (style, genre, score, score_known) tensors (B,)."""
    if not len(styles) == len(genres) == len(scores):
        raise ValueError("styles, genres and scores must have one entry per sample")
    spec = prior.spec
    style = [_lookup("style", spec.styles, s) for s in styles]
    genre = [_lookup("genre", spec.genres, g) for g in genres]
    for value in scores:
        if value is not None and not 0.0 <= value <= 100.0:
            raise UserError(f"score {value} is outside LAPIS's 0–100 scale")
    return (
        torch.tensor([prior.null_style if s is None else s for s in style]),
        torch.tensor([prior.null_genre if g is None else g for g in genre]),
        torch.tensor([0.0 if v is None else float(v) for v in scores]),
        torch.tensor([v is not None for v in scores]),
    )


def _pick(logits: torch.Tensor, *, temperature: float, top_k: int | None, generator: torch.Generator) -> torch.Tensor:
    """One code per row of logits (B, K): temperature, top-k, then a seeded multinomial draw."""
    logits = logits.float() / max(temperature, 1e-6)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]  # (B,)


class _Spatial:
    """h_t for t = 0, 1, …: with a KV cache (one new token per step) or by recomputing the sequence."""

    def __init__(self, prior: RQPrior, prefix: torch.Tensor, *, use_cache: bool):
        self.prior, self.use_cache = prior, use_cache
        self.caches = [{} for _ in prior.spatial] if use_cache else None
        self.bias = prior.token_bias(prefix)[:, 0]  # (B, d): added to every code token
        self.films = prior.films(prefix, len(prior.spatial))  # per spatial block: (B, 4, d) or None
        self.sequence = prefix + prior.spatial_pos[None, : prior.PREFIX]  # (B, 3, d)
        self.pending = self.sequence  # tokens the cache has not seen yet

    def context(self) -> torch.Tensor:
        """h for the next position (B, d)."""
        x = self.pending if self.use_cache else self.sequence
        for block, cache, film in zip(self.prior.spatial, self.caches or [None] * len(self.prior.spatial), self.films):
            x = block(x, cache, film)
        return self.prior.spatial_norm(x[:, -1])

    def append(self, token: torch.Tensor, position: int) -> None:
        """Add the token (B, d) of grid position `position` (0-based)."""
        token = (token + self.bias + self.prior.spatial_pos[self.prior.PREFIX + position])[:, None]  # (B, 1, d)
        self.sequence = torch.cat([self.sequence, token], dim=1)
        self.pending = token


def guidance_branches(prior: ConditionedPrior, style, genre, score, known, *, guided: bool, score_guided: bool):
    """The batch every draw runs on: the conditions as asked, then (guided) every condition dropped,
    then (score_guided) style and genre kept with the opposite score → (style, genre, score, known), each (B·branches,)."""
    branches = [(style, genre, score, known)]
    if guided:
        branches.append((torch.full_like(style, prior.null_style), torch.full_like(genre, prior.null_genre),
                         torch.zeros_like(score), torch.zeros_like(known)))
    if score_guided:
        branches.append((style, genre, torch.where(known, MIRROR - score, score), known))
    return tuple(torch.cat(parts) for parts in zip(*branches))


def guided_logits(logits: torch.Tensor, b: int, *, guidance_scale: float, score_guidance_scale: float) -> torch.Tensor:
    """Logits (b, …, K) from the branches' logits (b·branches, …, K) stacked as `guidance_branches` orders them."""
    cond = logits[:b]
    guided = guidance_scale != 1.0
    mixed = logits[b : 2 * b] + guidance_scale * (cond - logits[b : 2 * b]) if guided else cond
    if score_guidance_scale != 0.0:
        mixed = mixed + score_guidance_scale * (cond - logits[-b:])
    return mixed


@torch.no_grad()
def sample_codes(
    prior: ConditionedPrior,
    *,
    styles: Sequence[str | None],
    genres: Sequence[str | None],
    scores: Sequence[float | None],
    seed: int,
    guidance_scale: float = 1.0,
    score_guidance_scale: float = 0.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    use_cache: bool = True,
    desc: str | None = None,
) -> torch.Tensor:
    """Codes for B = len(styles) samples, on the prior's device: (B, N, L) from an RQ-Transformer,
    tokens (B, T) from a next-scale prior. `desc`: show a progress bar."""
    prior.eval()
    device = next(prior.parameters()).device
    style, genre, score, known = (t.to(device) for t in resolve_conditions(prior, styles, genres, scores))
    b = style.shape[0]
    guided, score_guided = guidance_scale != 1.0, score_guidance_scale != 0.0
    batch = guidance_branches(prior, style, genre, score, known, guided=guided, score_guided=score_guided)
    branches = batch[0].shape[0] // b
    generator = torch.Generator(device=device).manual_seed(seed)
    prefix = prior.condition_tokens(*batch)  # (B·branches, 3, d)
    mix = dict(guidance_scale=guidance_scale, score_guidance_scale=score_guidance_scale)
    pick = dict(temperature=temperature, top_k=top_k, generator=generator)
    if isinstance(prior, NextScalePrior):
        return _sample_next_scale(prior, prefix, b=b, branches=branches, use_cache=use_cache, desc=desc, mix=mix, pick=pick)

    spatial = _Spatial(prior, prefix, use_cache=use_cache)
    spec = prior.spec
    codes = torch.empty(b, spec.positions, spec.levels, dtype=torch.long, device=device)
    for t in tqdm(range(spec.positions), desc=desc, leave=False, disable=desc is None):
        context = spatial.context()  # (B', d)
        chosen: list[torch.Tensor] = []  # embeddings (B', d) of the levels picked so far
        for level in range(spec.levels):
            running = torch.stack(chosen, dim=1) if chosen else context.new_zeros(context.shape[0], 0, context.shape[-1])
            embeds = torch.cat([running, context.new_zeros(context.shape[0], 1, context.shape[-1])], dim=1)  # (B', level+1, d)
            x = prior.depth_inputs(context[:, None], embeds[:, None])  # (B', 1, level+1, dd)
            logits = prior.run_depth(x)[:, 0, -1]  # (B·branches, K)
            code = _pick(guided_logits(logits, b, **mix), **pick)  # (B,)
            codes[:, t, level] = code
            chosen.append(prior.code_embed[level](code.repeat(branches)))
        spatial.append(torch.stack(chosen, dim=1).sum(dim=1), t)
    return codes


def _sample_next_scale(prior: NextScalePrior, prefix: torch.Tensor, *, b: int, branches: int, use_cache: bool,
                       desc: str | None, mix: dict, pick: dict) -> torch.Tensor:
    """Tokens (b, T), one scale per pass: the scale's inputs from the codes drawn so far, every
    position of the scale drawn at once. Without the cache each pass recomputes the whole sequence."""
    caches = [{} for _ in prior.blocks] if use_cache else None
    sequence = prefix + prior.pos[: prior.PREFIX]  # (B', 3, d): everything fed so far (recomputing)
    pending, past = sequence, 0  # not yet seen by the caches
    cumulative, drawn = None, []
    for scale in tqdm(range(len(prior.spec.scales)), desc=desc, leave=False, disable=desc is None):
        x = prior.embed_inputs([prior.scale_input(cumulative, scale, prefix.shape[0])], prefix, scale)  # (B', s², d)
        if use_cache:
            out = prior.run(torch.cat([pending, x], dim=1), prefix, past=past, caches=caches)
            past += pending.shape[1] + x.shape[1]
            pending = x[:, :0]
        else:
            sequence = torch.cat([sequence, x], dim=1)
            out = prior.run(sequence, prefix)
        logits = prior.head(out[:, -x.shape[1] :])  # (B', s², K)
        mixed = guided_logits(logits, b, **mix)  # (b, s², K)
        codes = _pick(mixed.flatten(0, 1), **pick).view(b, -1)  # (b, s²)
        drawn.append(codes)
        step = prior.code_map(codes.repeat(branches, 1), scale)  # every branch continues from the same codes
        cumulative = step if cumulative is None else cumulative + step
    return torch.cat(drawn, dim=1)


@torch.no_grad()
def marginal_codes(train_codes: torch.Tensor, *, n: int, seed: int) -> torch.Tensor:
    """The baseline the prior must beat: codes (n, …) drawn independently per position and level
    from their frequencies in `train_codes` (M, …), in either layout: (M, N, L) or tokens (M, T)."""
    m, *shape = train_codes.shape
    k = int(train_codes.max()) + 1
    generator = torch.Generator().manual_seed(seed)
    if len(shape) == 2:  # (M, N, L): level by level, as before, so the same seed draws the same codes
        out = torch.empty(n, *shape, dtype=torch.long)
        for level in range(shape[1]):
            counts = torch.nn.functional.one_hot(train_codes[..., level].cpu(), k).sum(0).float()  # (N, K)
            out[..., level] = torch.multinomial(counts, n, replacement=True, generator=generator).T  # (n, N)
        return out
    counts = torch.nn.functional.one_hot(train_codes.reshape(m, -1).cpu(), k).sum(0).float()  # (T, K)
    return torch.multinomial(counts, n, replacement=True, generator=generator).T.reshape(n, *shape)
