"""The RQ prior: it learns, it is causal over positions and over levels, and sampling is exact."""

from __future__ import annotations

import pytest
import torch

from squeezegen.errors import UserError
from squeezegen.rq.prior import PriorSpec, RQPrior, build_prior, load_prior, save_prior
from squeezegen.rq.sampling import marginal_codes, resolve_conditions, sample_codes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STYLES = ("Cubism", "Post_Impressionism", "Ukiyo_e")
GENRES = ("portrait", "landscape")


def tiny_prior(*, levels=3, k=16, positions=9, dtype=torch.float32, seed=0, cond_every_position=True, cond_modulation=True) -> RQPrior:
    torch.manual_seed(seed)
    spec = PriorSpec(levels=levels, codebook_size=k, positions=positions, styles=STYLES, genres=GENRES,
                     width=32, heads=4, spatial_layers=2, depth_width=16, depth_layers=2,
                     cond_every_position=cond_every_position, cond_modulation=cond_modulation)
    prior = RQPrior(spec)
    if prior.film is not None:  # as after training: FiLM starts at zero (no modulation), which would test nothing
        for layer in prior.film:
            torch.nn.init.normal_(layer.weight, std=0.1)
    return prior.to(dtype).eval()


def prefix_for(prior: RQPrior, b: int, style=0, genre=0, score=50.0) -> torch.Tensor:
    s, g, v, known = resolve_conditions(prior, [STYLES[style]] * b, [GENRES[genre]] * b, [score] * b)
    return prior.condition_tokens(s, g, v, known).to(next(prior.parameters()).dtype)


def test_conditional_loss_falls_on_a_fixed_batch():
    prior = tiny_prior().train()
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (8, 9, 3), generator=gen)
    codes[:4, :, 0] = 3  # the condition decides level 1 of half the batch
    style = torch.tensor([0] * 4 + [1] * 4)
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        prefix = prior.condition_tokens(style, torch.zeros(8, dtype=torch.long), torch.full((8,), 50.0), torch.ones(8, dtype=torch.bool))
        return prior.loss(codes, prefix)

    first = loss().item()
    for _ in range(40):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert value.item() < 0.7 * first


def test_depth_transformer_predicts_level_k_from_levels_below_k_only():
    prior = tiny_prior()
    codes = torch.randint(0, 16, (2, 9, 3), generator=torch.Generator().manual_seed(1))
    changed = codes.clone()
    changed[:, 4, 2] = (changed[:, 4, 2] + 5) % 16  # level 3 of position 4
    a, b = prior(codes, prefix_for(prior, 2)), prior(changed, prefix_for(prior, 2))
    assert torch.equal(a[:, 4, :3], b[:, 4, :3])  # levels 1-3 of that position do not see it
    assert torch.equal(a[:, :5], b[:, :5])  # nor does anything at or before position 4
    assert not torch.allclose(a[:, 5:], b[:, 5:])  # later positions do


def test_spatial_transformer_is_causal_over_positions():
    prior = tiny_prior()
    codes = torch.randint(0, 16, (2, 9, 3), generator=torch.Generator().manual_seed(2))
    changed = codes.clone()
    changed[:, 6, 0] = (changed[:, 6, 0] + 1) % 16
    a, b = prior(codes, prefix_for(prior, 2)), prior(changed, prefix_for(prior, 2))
    assert torch.equal(a[:, :6], b[:, :6])
    assert torch.equal(a[:, 6, :1], b[:, 6, :1]) and not torch.allclose(a[:, 6, 1:], b[:, 6, 1:])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_conditions_change_the_prediction():
    prior = tiny_prior()
    codes = torch.randint(0, 16, (1, 9, 3))
    assert not torch.allclose(prior(codes, prefix_for(prior, 1, style=0)), prior(codes, prefix_for(prior, 1, style=2)))
    assert not torch.allclose(prior(codes, prefix_for(prior, 1, score=10.0)), prior(codes, prefix_for(prior, 1, score=90.0)))


def _sample(prior, **kw):
    args = dict(styles=["cubism", "ukiyo-e"], genres=["portrait", "Landscape"], scores=[80.0, 20.0], seed=3)
    return sample_codes(prior, **{**args, **kw})


def test_same_seed_same_codes_and_every_index_in_range():
    prior = tiny_prior()
    a, b = _sample(prior, guidance_scale=2.0), _sample(prior, guidance_scale=2.0)
    assert torch.equal(a, b) and a.shape == (2, 9, 3)
    assert int(a.min()) >= 0 and int(a.max()) < 16
    assert not torch.equal(a, _sample(prior, guidance_scale=2.0, seed=4))


def test_kv_cached_sampling_equals_recomputing_the_sequence():
    prior = tiny_prior(dtype=torch.float64)
    for guidance in (1.0, 3.0):
        assert torch.equal(_sample(prior, guidance_scale=guidance), _sample(prior, guidance_scale=guidance, use_cache=False))


@pytest.mark.parametrize("cond_every_position, cond_modulation", [(True, True), (False, False), (False, True)])
def test_greedy_sampling_follows_the_training_forward(cond_every_position, cond_modulation):
    """The sampler (one position and level at a time, KV cache) and the teacher-forced forward are
    the same model: greedy codes are the argmax of the forward's logits on those very codes."""
    prior = tiny_prior(dtype=torch.float64, cond_every_position=cond_every_position, cond_modulation=cond_modulation)
    codes = _sample(prior, top_k=1)
    first = prior(codes[:1], prefix_for(prior, 1, style=0, genre=0, score=80.0))
    second = prior(codes[1:], prefix_for(prior, 1, style=2, genre=1, score=20.0))
    assert torch.equal(first[0].argmax(-1), codes[0]) and torch.equal(second[0].argmax(-1), codes[1])


def test_condition_on_every_position_reaches_the_first_and_the_last_token():
    prior = tiny_prior()
    codes = torch.randint(0, 16, (1, 9, 3), generator=torch.Generator().manual_seed(5))
    a, b = prior(codes, prefix_for(prior, 1, style=0)), prior(codes, prefix_for(prior, 1, style=1))
    assert not torch.allclose(a[:, 0], b[:, 0]) and not torch.allclose(a[:, -1], b[:, -1])


def test_guidance_zero_is_unconditional_sampling():
    prior = tiny_prior(dtype=torch.float64)
    unconditional = sample_codes(prior, styles=[None, None], genres=[None, None], scores=[None, None], seed=3, guidance_scale=0.0)
    assert torch.equal(_sample(prior, guidance_scale=0.0), unconditional)


def test_score_guidance_pushes_the_asked_score_against_its_opposite():
    """Greedy codes with score guidance s are the argmax of l(score) + s·(l(score) − l(100 − score)),
    both branches teacher-forced on those very codes; cached and uncached sampling agree."""
    prior = tiny_prior(dtype=torch.float64)
    codes = sample_codes(prior, styles=["cubism"], genres=["portrait"], scores=[80.0], seed=0, top_k=1, score_guidance_scale=4.0)
    asked, opposite = prior(codes, prefix_for(prior, 1, score=80.0)), prior(codes, prefix_for(prior, 1, score=20.0))
    assert torch.equal((asked + 4.0 * (asked - opposite)).argmax(-1), codes)
    plain = sample_codes(prior, styles=["cubism"], genres=["portrait"], scores=[80.0], seed=0, top_k=1)
    assert not torch.equal(plain, codes)  # the third branch does change what is drawn
    kw = dict(guidance_scale=3.0, score_guidance_scale=4.0)
    assert torch.equal(_sample(prior, **kw), _sample(prior, **kw, use_cache=False))


def test_score_guidance_is_a_no_op_at_the_middle_score_or_without_a_score():
    prior = tiny_prior(dtype=torch.float64)
    args = dict(styles=["cubism", "ukiyo-e"], genres=["portrait", "landscape"], scores=[50.0, None], seed=1, guidance_scale=2.0)
    assert torch.equal(sample_codes(prior, **args, score_guidance_scale=8.0), sample_codes(prior, **args))


def test_top_k_one_is_greedy_and_temperature_keeps_indices_valid():
    prior = tiny_prior()
    assert torch.equal(_sample(prior, top_k=1, seed=0), _sample(prior, top_k=1, seed=99))  # no randomness left
    hot = _sample(prior, temperature=5.0)
    assert int(hot.min()) >= 0 and int(hot.max()) < 16


def test_unknown_names_list_the_valid_ones_and_scores_are_checked():
    prior = tiny_prior()
    with pytest.raises(UserError, match="unknown style 'surrealism'.*Cubism, Post_Impressionism, Ukiyo_e"):
        resolve_conditions(prior, ["surrealism"], ["portrait"], [50.0])
    with pytest.raises(UserError, match="unknown genre 'marine'"):
        resolve_conditions(prior, ["cubism"], ["marine"], [50.0])
    with pytest.raises(UserError, match="0–100"):
        resolve_conditions(prior, ["cubism"], ["portrait"], [120.0])
    style, genre, _, _ = resolve_conditions(prior, ["post impressionism", "UKIYO-E"], ["portrait", "landscape"], [1.0, 2.0])
    assert style.tolist() == [1, 2] and genre.tolist() == [0, 1]


def test_save_and_load_round_trip(tmp_path):
    prior = tiny_prior()
    save_prior(prior, tmp_path / "prior", meta={"grid_hw": [3, 3]})
    loaded = load_prior(tmp_path / "prior")
    assert loaded.spec == prior.spec and loaded.meta == {"grid_hw": [3, 3]}
    assert torch.equal(_sample(prior), _sample(loaded))
    with pytest.raises(UserError, match="run the train_prior stage"):
        load_prior(tmp_path / "nothing")


def test_marginal_codes_follow_the_training_frequencies():
    train = torch.zeros(50, 4, 2, dtype=torch.long)
    train[:, 1, 0] = 7  # position 1, level 1: always code 7
    train[25:, 2, 1] = 3  # position 2, level 2: half 0, half 3
    drawn = marginal_codes(train, n=400, seed=0)
    assert drawn.shape == (400, 4, 2) and (drawn[:, 1, 0] == 7).all() and (drawn[:, 0] == 0).all()
    share = (drawn[:, 2, 1] == 3).float().mean().item()
    assert 0.4 < share < 0.6 and set(drawn[:, 2, 1].tolist()) == {0, 3}


@pytest.mark.parametrize("kind, scales", [("rq_transformer", "equal"), ("next_scale", "pyramid")])
def test_full_profile_rq_generator_stays_under_120m_parameters(kind, scales):
    """RQ-VAE + prior + refiner at the full profile's sizes, counted on the meta device (no memory)."""
    import dataclasses
    from pathlib import Path

    from squeezegen.config import load_config
    from squeezegen.rq.prior_train import prior_spec
    from squeezegen.rq.recon_train import build_rqvae
    from squeezegen.rq.refiner import Refiner

    cfg = load_config(Path(__file__).resolve().parents[1] / "params.yaml", profile="full")
    side = cfg.data.rq_size // cfg.rqvae.downsample
    assert side == 16 and cfg.rqvae.levels == 4  # 16×16 final grid at 256 px
    with torch.device("meta"):
        rqvae = build_rqvae(dataclasses.replace(cfg.rqvae, scales=scales), image_size=cfg.data.rq_size)
        spec = prior_spec(dataclasses.replace(cfg.prior, kind=kind), rqvae=rqvae, styles=[f"style {i}" for i in range(27)],
                          genres=[f"genre {i}" for i in range(8)], grid_hw=(side, side))
        counts = {"rqvae": rqvae, "prior": build_prior(spec),
                  "refiner": Refiner.build(channels=cfg.refiner.channels, image_size=cfg.data.rq_size)}
    params = {name: sum(p.numel() for p in model.parameters()) for name, model in counts.items()}
    assert all(n > 1_000_000 for n in params.values()) and sum(params.values()) <= 120_000_000, params
