"""Next-scale generation: the pyramid RQ-VAE and the next-scale prior (block-causal, exact sampling)."""

from __future__ import annotations

import pytest
import torch

from squeezegen.rq.model import RQVAE, load_rqvae, pyramid_sides, save_rqvae
from squeezegen.rq.next_scale import NextScalePrior, block_causal_mask
from squeezegen.rq.prior import PriorSpec, build_prior, load_prior, save_prior
from squeezegen.rq.sampling import marginal_codes, resolve_conditions, sample_codes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STYLES = ("Cubism", "Post_Impressionism", "Ukiyo_e")
GENRES = ("portrait", "landscape")
SCALES = (1, 2, 4, 4)  # the last scale repeats the full grid: both kinds of step are covered
TOKENS = sum(s * s for s in SCALES)  # 37


def pyramid_rqvae(scales=(2, 4, 8), seed: int = 0) -> RQVAE:
    torch.manual_seed(seed)
    return RQVAE(levels=len(scales), codebook_size=16, code_dim=8, downsample=4, channels=[8, 8, 8], norm_groups=0,
                 scales=list(scales))


def tiny_next_scale(*, dtype=torch.float64, cond_every_position=True, cond_modulation=True, seed=0) -> NextScalePrior:
    torch.manual_seed(seed)
    spec = PriorSpec(levels=len(SCALES), codebook_size=16, positions=16, styles=STYLES, genres=GENRES, width=32, heads=4,
                     spatial_layers=2, kind="next_scale", scales=SCALES, cond_every_position=cond_every_position,
                     cond_modulation=cond_modulation)
    prior = build_prior(spec)
    if prior.film is not None:  # FiLM starts at zero (no modulation), which would test nothing
        for layer in prior.film:
            torch.nn.init.normal_(layer.weight, std=0.1)
    return prior.to(dtype).eval()


def prefix_for(prior, b: int, style=0, genre=0, score=50.0) -> torch.Tensor:
    s, g, v, known = resolve_conditions(prior, [STYLES[style]] * b, [GENRES[genre]] * b, [score] * b)
    return prior.condition_tokens(s, g, v, known).to(next(prior.parameters()).dtype)


def _sample(prior, **kw):
    args = dict(styles=["cubism", "ukiyo-e"], genres=["portrait", "Landscape"], scores=[80.0, 20.0], seed=3)
    return sample_codes(prior, **{**args, **kw})


# ------------------------------------------------------------------------------ pyramid RQ-VAE


def test_pyramid_sides_double_up_to_the_full_grid():
    assert pyramid_sides(4, 16, 4) == [4, 8, 16, 16]
    assert pyramid_sides(4, 16, 2) == [2, 4, 8, 16]
    assert pyramid_sides(6, 16, 1) == [1, 2, 4, 8, 16, 16]
    assert pyramid_sides(2, 16, 4) == [4, 16] and pyramid_sides(3, 2, 4) == [2, 2, 2]
    with pytest.raises(ValueError, match="coarse to fine"):
        RQVAE(levels=2, codebook_size=16, code_dim=8, downsample=4, channels=[8, 8, 8], scales=[8, 2])


def test_pyramid_codes_are_one_token_per_cell_of_each_scale_and_rebuild_the_latent():
    model = pyramid_rqvae()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    model.train()(x)  # k-means init + one EMA update
    model.eval()
    quantized, indices, _ = model.quantize(x)
    assert indices.shape == (3, 4 + 16 + 64) and model.codes_per_image(8) == 84
    assert [t.shape[1] for t in model.split_levels(indices)] == [4, 16, 64]
    assert torch.allclose(model.latent_from_indices(indices), quantized, atol=1e-6)
    assert torch.equal(model.from_tokens(model.to_tokens(indices)), indices)


@pytest.mark.parametrize("k", [1, 2])
def test_decoding_k_pyramid_levels_reads_only_the_codes_of_scales_up_to_k(k):
    model = pyramid_rqvae()
    model.train()(torch.rand(3, 3, 32, 32) * 2 - 1)  # k-means init: the codebooks start empty
    model.eval()
    indices = torch.randint(0, 16, (2, 84), generator=torch.Generator().manual_seed(1))
    changed = indices.clone()
    first = sum(s * s for s in (2, 4, 8)[:k])
    changed[:, first:] = (changed[:, first:] + 1) % 16
    assert torch.equal(model.decode_indices(indices, levels=k), model.decode_indices(changed, levels=k))
    assert not torch.equal(model.decode_indices(indices, levels=k + 1), model.decode_indices(changed, levels=k + 1))


def test_equal_scales_are_the_residual_vq_of_every_grid_cell():
    """scales=None builds the equal-levels RQ-VAE: ResidualVQ over the h·w latents, nothing else in the path."""
    from einops import rearrange

    torch.manual_seed(0)
    model = RQVAE(levels=3, codebook_size=16, code_dim=8, downsample=4, channels=[8, 8, 8])
    assert "scales" not in model.config and not model.pyramid
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    model.train()(x)
    model.eval()
    z = model.encoder(x)
    quantized, indices, _ = model.quantizer(rearrange(z, "b d h w -> b (h w) d"))
    recon, got, _ = model(x)
    assert torch.equal(got, indices) and torch.equal(recon, model.decoder(rearrange(quantized, "b (h w) d -> b d h w", h=4)))
    assert model.to_tokens(indices).shape == (2, 48) and torch.equal(model.from_tokens(model.to_tokens(indices)), indices)
    assert torch.equal(model.to_tokens(indices)[:, :16], indices[..., 0])  # level by level


def test_pyramid_rqvae_saves_and_loads_identically(tmp_path):
    model = pyramid_rqvae()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    model.train()(x)
    save_rqvae(model.eval(), tmp_path / "rq")
    loaded = load_rqvae(tmp_path / "rq")
    assert loaded.scales == [2, 4, 8]
    assert torch.equal(model(x)[0], loaded(x)[0])


# ------------------------------------------------------------------------------ next-scale prior


def test_mask_is_block_causal_by_scale():
    mask = block_causal_mask((1, 2), prefix=3)  # blocks: 3 condition tokens, 1, 4
    assert mask.shape == (8, 8)
    assert mask[:3, :3].all() and not mask[:3, 3:].any()  # the condition sees only itself
    assert mask[3, :4].all() and not mask[3, 4:].any()
    assert mask[4:, :].all()  # the last scale sees everything, itself included


def test_changing_the_codes_of_scale_k_leaves_every_logit_up_to_scale_k_unchanged():
    prior = tiny_next_scale()
    tokens = torch.randint(0, 16, (2, TOKENS), generator=torch.Generator().manual_seed(2))
    logits = prior(tokens, prefix_for(prior, 2))
    start = 0
    for side in SCALES[:-1]:
        start += side * side  # first token of the next scale
        changed = tokens.clone()
        changed[:, start - side * side : start] = (changed[:, start - side * side : start] + 1) % 16
        after = prior(changed, prefix_for(prior, 2))
        assert torch.equal(after[:, :start], logits[:, :start])  # this scale's own logits too: they predict it
        assert not torch.allclose(after[:, start:], logits[:, start:])  # the next scale reads it


def test_next_scale_loss_falls_on_a_fixed_batch():
    prior = tiny_next_scale(dtype=torch.float32).train()
    tokens = torch.randint(0, 16, (4, TOKENS), generator=torch.Generator().manual_seed(0))
    prefix = lambda: prefix_for(prior, 4)  # noqa: E731 — rebuilt each step: the embeddings train too
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    first = prior.loss(tokens, prefix()).item()
    for _ in range(40):
        opt.zero_grad()
        prior.loss(tokens, prefix()).backward()
        opt.step()
    assert prior.loss(tokens, prefix()).item() < 0.5 * first


def test_same_seed_same_tokens_every_index_in_range_and_kv_cache_equals_recomputing():
    prior = tiny_next_scale()
    for guidance, score_guidance in ((1.0, 0.0), (3.0, 2.0)):
        a = _sample(prior, guidance_scale=guidance, score_guidance_scale=score_guidance)
        assert a.shape == (2, TOKENS) and int(a.min()) >= 0 and int(a.max()) < 16
        assert torch.equal(a, _sample(prior, guidance_scale=guidance, score_guidance_scale=score_guidance))
        assert torch.equal(a, _sample(prior, guidance_scale=guidance, score_guidance_scale=score_guidance, use_cache=False))
    assert not torch.equal(_sample(prior), _sample(prior, seed=4))


@pytest.mark.parametrize("cond_every_position, cond_modulation", [(True, True), (False, False)])
def test_greedy_sampling_follows_the_training_forward(cond_every_position, cond_modulation):
    """One scale per pass with a KV cache is the teacher-forced model: greedy tokens are the argmax
    of the forward's logits on those very tokens."""
    prior = tiny_next_scale(cond_every_position=cond_every_position, cond_modulation=cond_modulation)
    tokens = _sample(prior, top_k=1)
    first = prior(tokens[:1], prefix_for(prior, 1, style=0, genre=0, score=80.0))
    second = prior(tokens[1:], prefix_for(prior, 1, style=2, genre=1, score=20.0))
    assert torch.equal(first[0].argmax(-1), tokens[0]) and torch.equal(second[0].argmax(-1), tokens[1])


def test_guidance_zero_is_unconditional_and_conditions_change_the_draw():
    prior = tiny_next_scale()
    unconditional = sample_codes(prior, styles=[None, None], genres=[None, None], scores=[None, None], seed=3, guidance_scale=0.0)
    assert torch.equal(_sample(prior, guidance_scale=0.0), unconditional)
    assert not torch.equal(_sample(prior, guidance_scale=1.0), unconditional)


def test_next_scale_prior_saves_loads_and_samples_the_same(tmp_path):
    prior = tiny_next_scale(dtype=torch.float32)
    save_prior(prior, tmp_path / "prior")
    loaded = load_prior(tmp_path / "prior")
    assert isinstance(loaded, NextScalePrior) and loaded.spec == prior.spec
    assert torch.equal(_sample(prior), _sample(loaded))


def test_marginal_tokens_follow_the_training_frequencies():
    train = torch.zeros(50, 6, dtype=torch.long)
    train[:, 3] = 7
    drawn = marginal_codes(train, n=20, seed=0)
    assert drawn.shape == (20, 6) and torch.equal(drawn, train[:20])
