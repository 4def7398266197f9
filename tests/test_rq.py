"""RQ-VAE and refiner: geometry, exact decoding from codes, level masking, training, saving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from squeezegen.errors import UserError
from squeezegen.image_metrics import psnr
from squeezegen.rq.evaluation import codebook_stats, evaluate_rqvae, reconstruct_image
from squeezegen.rq.model import RQVAE, count_parameters, load_rqvae, save_rqvae
from squeezegen.rq.recon_train import make_rqvae_loss
from squeezegen.rq.refiner import Refiner, load_refiner, save_refiner
from squeezegen.training import LoopSettings, train


def tiny_rqvae(*, levels: int = 3, downsample: int = 4, shared_codebook: bool = False, **kwargs) -> RQVAE:
    torch.manual_seed(0)
    depth = downsample.bit_length()  # log2(downsample) + 1 resolutions
    return RQVAE(
        levels=levels, codebook_size=16, code_dim=8, downsample=downsample, channels=[8] * depth,
        shared_codebook=shared_codebook, **kwargs,
    )


def structured_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """uint8 (n, 3, size, size): coloured blocks and stripes, not white noise."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 3, size, size), dtype=np.uint8)
    for i in range(n):
        out[i] = rng.integers(0, 256, (3, 1, 1))
        y, x = rng.integers(0, size // 2, 2)
        out[i, :, y : y + size // 2, x : x + size // 2] = rng.integers(0, 256, (3, 1, 1))
        out[i, :, :, :: 4 + i % 3] //= 2
    return torch.from_numpy(out)


def signed(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1


def test_indices_have_one_code_per_grid_cell_and_level_at_full_geometry():
    model = tiny_rqvae(levels=4, downsample=16).eval()  # 256 px → 16×16 grid, as in the full profile
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        recon, indices, losses = model(x)
    assert indices.shape == (2, 16 * 16, 4)
    assert recon.shape == x.shape
    assert indices.min() >= 0 and indices.max() < 16
    assert losses["commitment"].ndim == 0


@pytest.mark.parametrize("shared_codebook", [False, True])
def test_codes_rebuild_the_quantized_latent_exactly(shared_codebook):
    model = tiny_rqvae(shared_codebook=shared_codebook)
    model.train()(signed(structured_images(8)))  # k-means init + one EMA update, so codebooks are not trivial
    model.eval()
    with torch.no_grad():
        quantized, indices, _ = model.quantize(signed(structured_images(4, seed=1)))
        rebuilt = model.latent_from_indices(indices)
    assert torch.allclose(rebuilt, quantized, atol=1e-6, rtol=0)
    assert torch.allclose(model.decode_indices(indices), model(signed(structured_images(4, seed=1)))[0], atol=1e-5)


@pytest.mark.parametrize("k", [1, 2])
def test_decoding_with_k_levels_ignores_the_finer_levels(k):
    model = tiny_rqvae(levels=3)
    model.train()(signed(structured_images(8)))  # k-means init: codebooks start at zero before it
    model.eval()
    g = torch.Generator().manual_seed(k)
    indices = torch.randint(0, 16, (2, 16, 3), generator=g)
    with torch.no_grad():
        base = model.decode_indices(indices, levels=k)
        finer_changed = indices.clone()
        finer_changed[..., k:] = torch.randint(0, 16, finer_changed[..., k:].shape, generator=g)
        assert torch.equal(model.decode_indices(finer_changed, levels=k), base)
        own_changed = indices.clone()
        own_changed[..., k - 1] = (own_changed[..., k - 1] + 1) % 16  # a level that is used must matter
        assert not torch.allclose(model.decode_indices(own_changed, levels=k), base)
    with pytest.raises(ValueError):
        model.decode_indices(indices, levels=4)


def test_a_few_training_steps_lower_the_loss(tmp_path):
    images = structured_images(16)
    model = tiny_rqvae(levels=2)
    loss_fn = make_rqvae_loss(recon_loss="l1")

    def eval_recon_loss() -> float:
        with torch.no_grad():
            return float(loss_fn(model.eval(), [images], 0)[1]["recon"])

    model.train()(signed(images))  # k-means init, so "before" is a working (untrained) quantizer
    before = eval_recon_loss()
    settings = LoopSettings(max_steps=30, lr=3e-3, checkpoint_every=1000, seed=0, batch_size=8, warmup_steps=2)
    result = train(
        model=model.train(), loss_fn=loss_fn, dataset=torch.utils.data.TensorDataset(images), settings=settings,
        checkpoint_dir=tmp_path / "ckpt", fingerprint="test", desc="test_rqvae",
    )
    assert len(result.history) == 30 and {"recon", "commitment"} <= set(result.history[0])
    assert eval_recon_loss() < 0.8 * before  # measured: 0.54 → 0.38


def test_codebook_usage_and_perplexity_per_level():
    one_code = torch.zeros(2, 8, 1, dtype=torch.long)  # one code everywhere
    every_code = torch.arange(16).reshape(1, 16, 1)  # each of 16 codes once
    usage, perplexity = codebook_stats(list(torch.cat([one_code.reshape(1, 16, 1), every_code], dim=-1).unbind(-1)), codebook_size=16)
    assert usage == pytest.approx([1 / 16, 1.0])
    assert perplexity == pytest.approx([1.0, 16.0])

    model = tiny_rqvae(levels=3)
    model.train()(signed(structured_images(8)))
    lpips_stub = lambda a, b: (a - b).abs().mean(dim=(1, 2, 3))  # noqa: E731 — stands in for an LPIPS net
    metrics = evaluate_rqvae(
        model, structured_images(6, seed=3), lpips_net=lpips_stub, lpips_name="lpips_randnet", batch_size=4, device="cpu"
    )
    for key in ("codebook_usage", "perplexity", "psnr_by_levels", "ssim_by_levels"):
        assert len(metrics[key]) == 3
    assert all(0 < u <= 1 for u in metrics["codebook_usage"])
    assert metrics["bits_per_image"] == 4 * 4 * 3 * 4  # 4×4 grid × 3 levels × log2(16) bits
    assert metrics["psnr_by_levels"][-1] == pytest.approx(metrics["psnr"], abs=1e-3)
    x = signed(structured_images(6, seed=3))
    with torch.no_grad():  # the unquantized-latent ceiling: decoder(encoder(x)), no codebook involved
        ceiling = psnr(model.decoder(model.encoder(x)).clamp(-1, 1), x).mean()
    assert metrics["psnr_latent"] == pytest.approx(float(ceiling), abs=1e-3)


@pytest.mark.parametrize("shared_codebook", [False, True])
def test_save_and_load_give_identical_outputs(tmp_path, shared_codebook):
    model = tiny_rqvae(shared_codebook=shared_codebook)
    model.train()(signed(structured_images(8)))
    model.eval()
    save_rqvae(model, tmp_path / "rqvae", meta={"image_size": 16})
    loaded = load_rqvae(tmp_path / "rqvae")
    x = signed(structured_images(3, seed=5))
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), model.encode(x))
        assert torch.equal(loaded(x)[0], model(x)[0])
        assert torch.equal(loaded.decode_indices(model.encode(x), levels=2), model.decode_indices(model.encode(x), levels=2))
    assert loaded.meta == {"image_size": 16}
    assert json.loads((tmp_path / "rqvae" / "config.json").read_text())["model"]["shared_codebook"] is shared_codebook
    with pytest.raises(UserError, match="train_rqvae"):
        load_rqvae(tmp_path / "missing")


def test_quantize_dropout_drops_only_finer_levels_and_every_k_decodes():
    model = tiny_rqvae(levels=4, quantize_dropout=True).train()
    x = signed(structured_images(8))
    kept = set()
    for seed in range(12):  # the dropout level is drawn per forward pass
        torch.manual_seed(seed)
        recon, indices, losses = model(x)
        assert recon.shape == x.shape and indices.shape == (8, 16, 4) and losses["commitment"].ndim == 0
        dropped = (indices == -1).all(dim=(0, 1))  # (L,): a level is dropped for the whole batch or not at all
        assert not dropped[0] and not (indices[..., 0] == -1).any()  # level 1 is always trained
        n = int((~dropped).sum())
        assert dropped[n:].all() and not dropped[:n].any()  # only a suffix of finer levels is dropped
        kept.add(n)
    assert len(kept) > 1  # coarse prefixes are trained alone, not only the full stack
    model.eval()
    with torch.no_grad():
        indices = model.encode(x)
        assert (indices >= 0).all()  # no dropout at inference
        decodes = [model.decode_indices(indices, levels=k) for k in range(1, 5)]
    for k, image in enumerate(decodes, 1):
        assert image.shape == x.shape and torch.isfinite(image).all(), k
    for coarse, finer in zip(decodes, decodes[1:]):
        assert not torch.allclose(coarse, finer)  # each added level changes the picture


@pytest.mark.parametrize("norm_groups", [0, 32])
def test_replicate_padding_decodes_a_constant_latent_without_a_frame(norm_groups):
    torch.manual_seed(0)
    z = torch.randn(1, 8, 1, 1).expand(1, 8, 4, 4)  # one latent vector everywhere: a flat image
    outputs = {}
    for padding_mode in ("replicate", "zeros"):
        torch.manual_seed(0)
        model = RQVAE(
            levels=2, codebook_size=16, code_dim=8, downsample=4, channels=[8, 8, 8],
            norm_groups=norm_groups, padding_mode=padding_mode,
        ).eval()
        with torch.no_grad():
            outputs[padding_mode] = model.decoder(z)  # (1, 3, 16, 16)
    flat = outputs["replicate"]
    # Replicate padding: a border pixel sees the same neighbourhood as an inner one → no frame.
    assert torch.allclose(flat, flat[..., 8:9, 8:9].expand_as(flat), atol=1e-5)
    # Zero padding gives the border its own values: the frame the old toy model learned to draw.
    framed = outputs["zeros"]
    assert (framed[..., 0, :] - framed[..., 8:9, 8]).abs().max() > 1e-3


def test_norm_groups_sets_the_encoder_and_decoder_normalization():
    def group_norms(model):
        return [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]

    assert group_norms(tiny_rqvae(norm_groups=0)) == []  # none: each image keeps its mean colour and contrast
    assert {m.num_groups for m in group_norms(tiny_rqvae(norm_groups=2))} == {2}
    old = group_norms(tiny_rqvae())  # the default (32) at 8 channels is one channel per group: instance norm
    assert old and all(m.num_groups == m.num_channels for m in old)


def test_load_rqvae_turns_an_unbuildable_config_into_a_user_error(tmp_path):
    model = tiny_rqvae(norm_groups=0, padding_mode="replicate")
    save_rqvae(model, tmp_path / "rqvae")
    loaded = load_rqvae(tmp_path / "rqvae")
    assert (loaded.config["norm_groups"], loaded.config["padding_mode"]) == (0, "replicate")
    path = tmp_path / "rqvae" / "config.json"
    config = json.loads(path.read_text())
    for broken in ({"future_knob": 1}, {"norm_groups": 8}, {"padding_mode": "mirror"}):  # unknown key / other weights / bad value
        path.write_text(json.dumps({**config, "model": {**config["model"], **broken}}))
        with pytest.raises(UserError, match="cannot rebuild this RQ-VAE.*train_rqvae"):
            load_rqvae(tmp_path / "rqvae")


def test_refiner_starts_as_identity_and_round_trips(tmp_path):
    torch.manual_seed(0)
    refiner = Refiner.build(channels=[8, 16], image_size=16).eval()
    x = signed(structured_images(2))
    with torch.no_grad():
        assert torch.equal(refiner(x), x)  # zero-initialised output conv
        torch.nn.init.normal_(refiner.unet.conv_out.weight, std=0.1)  # pretend it was trained
        out = refiner(x)
        assert not torch.equal(out, x)
        save_refiner(refiner, tmp_path / "refiner")
        assert torch.equal(load_refiner(tmp_path / "refiner")(x), out)
    with pytest.raises(UserError, match="train_refiner"):
        load_refiner(tmp_path / "missing")


def test_full_profile_refiner_size():
    refiner = Refiner.build(channels=[64, 128, 256, 320], image_size=256)
    assert 15e6 <= count_parameters(refiner) <= 25e6


def test_reconstruct_image_levels_and_errors(tmp_path):
    model = tiny_rqvae(levels=3)
    model.train()(signed(structured_images(8)))
    save_rqvae(model.eval(), tmp_path / "rqvae", meta={"image_size": 16})
    torch.manual_seed(0)
    refiner = Refiner.build(channels=[8, 16], image_size=16)
    torch.nn.init.normal_(refiner.unet.conv_out.weight, std=0.1)  # not the identity, so refining shows
    save_refiner(refiner, tmp_path / "refiner")
    photo = Image.fromarray(structured_images(1, size=40)[0].permute(1, 2, 0).numpy()).crop((0, 0, 40, 30))
    coarse = reconstruct_image(photo, rqvae_dir=tmp_path / "rqvae", levels=1)
    full = reconstruct_image(photo, rqvae_dir=tmp_path / "rqvae", levels=3)
    refined = reconstruct_image(photo, rqvae_dir=tmp_path / "rqvae", levels=None, refiner_dir=tmp_path / "refiner")
    assert coarse.size == full.size == refined.size == (16, 16) and refined.mode == "RGB"
    assert not np.array_equal(np.asarray(coarse), np.asarray(full))
    assert not np.array_equal(np.asarray(full), np.asarray(refined))
    for bad in (0, 4):
        with pytest.raises(UserError, match="between 1 and 3"):
            reconstruct_image(photo, rqvae_dir=tmp_path / "rqvae", levels=bad)



def write_tiny_project(root: Path, *, size: int = 32) -> None:
    """params.yaml (the repo's toy profile shrunk to seconds) + data/processed (24 train / 6 val images)."""
    import datasets
    import yaml

    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    toy = raw["profiles"]["toy"]
    toy["data"]["rq_size"] = size
    toy["rqvae"].update(downsample=4, channels=[4, 8, 8], max_steps=4, batch_size=8)
    toy["refiner"].update(channels=[8, 16], max_steps=4, batch_size=8, lpips_pretrained=False)
    raw["rqvae"].update(levels=3, codebook_size=16, code_dim=8, checkpoint_every=4)
    raw["refiner"]["checkpoint_every"] = 4
    raw["evaluate"]["num_progressive"] = 2
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    features = datasets.Features({"image_rq": datasets.Image(), "image_id": datasets.Value("string")})

    def split(n: int, seed: int) -> datasets.Dataset:
        pixels = structured_images(n, size=size, seed=seed).permute(0, 2, 3, 1).numpy()  # (n, S, S, 3)
        rows = {"image_rq": [Image.fromarray(p) for p in pixels], "image_id": [f"img{seed}_{i}" for i in range(n)]}
        return datasets.Dataset.from_dict(rows, features=features)

    datasets.DatasetDict(train=split(24, 0), val=split(6, 1)).save_to_disk(str(root / "data" / "processed"))


def test_stages_write_models_metrics_curves_and_pictures(tmp_path, monkeypatch):
    from squeezegen.stages import train_refiner, train_rqvae

    write_tiny_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SQUEEZEGEN_MLFLOW", "0")

    rq = train_rqvae.main()
    from squeezegen.metrics_files import merge_perf

    on_disk = json.loads(Path("metrics/rqvae.json").read_text())
    assert {"train_seconds", "steps_per_s", "peak_mem_bytes"} <= set(on_disk["perf"])  # CPU: peak is RSS
    assert merge_perf(on_disk) == json.loads(json.dumps(rq))
    for key in ("codebook_usage", "perplexity", "psnr_by_levels", "ssim_by_levels"):
        assert len(rq[key]) == 3
    sides = rq["scales"]  # 3 levels on the 8×8 grid of 32 px images: [8, 8, 8] (equal) or a pyramid ending at 8
    assert len(sides) == 3 and sides[-1] == 8 and rq["codes_per_image"] == sum(side * side for side in sides)
    assert rq["bits_per_image"] == rq["codes_per_image"] * 4 and "lpips_randnet" in rq
    assert Path("metrics/rqvae_levels.csv").read_text().splitlines()[0] == "levels,psnr,ssim"
    assert len(Path("metrics/rqvae_levels.csv").read_text().splitlines()) == 1 + 3
    assert len(Path("metrics/rqvae_loss.csv").read_text().splitlines()) == 1 + 4
    assert Path("reports/rq/progressive.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_rqvae("models/rqvae").meta["image_size"] == 32
    assert not Path("checkpoints/train_rqvae").exists()

    ref = train_refiner.main()
    for name in ("psnr", "ssim", "l1", "lpips_randnet"):
        assert f"{name}_before" in ref and f"{name}_after" in ref
    assert ref["psnr_before"] == pytest.approx(rq["psnr"], abs=1e-3)  # same frozen RQ-VAE, same val images
    assert ref["params"] == count_parameters(load_refiner("models/refiner"))
    assert len(Path("metrics/refiner_loss.csv").read_text().splitlines()) == 1 + 4
    with Image.open("reports/refiner/progressive.png") as picture:
        assert picture.format == "PNG"
    assert not Path("checkpoints/train_refiner").exists()
