"""Image-quality metrics: PSNR, SSIM and the LPIPS loading rule, on tiny tensors."""

from __future__ import annotations

import math
import urllib.error
from pathlib import Path

import pytest
import torch

from squeezegen.errors import UserError
from squeezegen.image_metrics import (
    ALEXNET_CHECKPOINT,
    PSNR_CAP_DB,
    load_lpips,
    lpips_distance,
    lpips_metric_name,
    psnr,
    ssim,
)


def smooth_images(batch: int = 2, size: int = 24, seed: int = 0) -> torch.Tensor:
    """Structured images in [-1, 1]: gradients and a disc, so SSIM has structure to compare."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for _ in range(batch):
        a, b, r = torch.rand(3, generator=g)
        disc = ((xx - a + 0.5) ** 2 + (yy - b + 0.5) ** 2 < (0.2 + 0.3 * r) ** 2).float()
        out.append(torch.stack([xx * a, yy * b, disc * 1.6 - 0.8]))
    return torch.stack(out).clamp(-1, 1)  # (B, 3, S, S)


def test_psnr_identical_is_capped_and_noise_lowers_it():
    x = smooth_images()
    assert torch.all(psnr(x, x) == PSNR_CAP_DB)
    g = torch.Generator().manual_seed(1)
    small = psnr(x, x + 0.01 * torch.randn(x.shape, generator=g))
    large = psnr(x, x + 0.1 * torch.randn(x.shape, generator=g))
    assert small.shape == (2,)
    assert torch.all(large < small) and torch.all(small < PSNR_CAP_DB)


def test_psnr_matches_its_definition_in_both_value_ranges():
    a = torch.zeros(1, 3, 8, 8)
    b = torch.full((1, 3, 8, 8), 0.1)  # MSE 0.01 on a peak-to-peak range of 2
    assert psnr(a, b).item() == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-4)
    # The same two images expressed in [0, 1]: half the error on half the range, same PSNR.
    assert psnr((a + 1) / 2, (b + 1) / 2, value_range=(0.0, 1.0)).item() == pytest.approx(psnr(a, b).item(), abs=1e-4)


def test_ssim_identical_is_one_and_more_noise_lowers_it():
    x = smooth_images()
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(x.shape, generator=g)
    values = [ssim(x, (x + s * noise).clamp(-1, 1)) for s in (0.02, 0.1, 0.4)]
    assert torch.all(values[0] > values[1]) and torch.all(values[1] > values[2])
    assert torch.allclose(ssim(x, x + 0.1 * noise), ssim(x + 0.1 * noise, x), atol=1e-6)  # symmetric


def test_ssim_of_flat_images_follows_the_luminance_term():
    # Flat images have zero variance, so SSIM reduces to (2·μx·μy + C1) / (μx² + μy² + C1).
    mu_x, mu_y, c1 = 0.3, 0.7, (0.01 * 1.0) ** 2
    a, b = torch.full((1, 1, 16, 16), mu_x), torch.full((1, 1, 16, 16), mu_y)
    expected = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1)
    assert ssim(a, b, value_range=(0.0, 1.0)).item() == pytest.approx(expected, rel=1e-4)
    # The [-1, 1] convention gives the same number for the same pictures.
    assert ssim(a * 2 - 1, b * 2 - 1).item() == pytest.approx(expected, rel=1e-4)


def test_ssim_handles_images_smaller_than_the_window():
    x = smooth_images(size=6)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-5)
    assert torch.all(ssim(x, -x) < 0.5)


def test_randnet_lpips_is_offline_seeded_frozen_and_keeps_the_calibrated_heads():
    import lpips

    before = torch.random.get_rng_state()
    net_a = load_lpips(pretrained=False)
    assert torch.equal(torch.random.get_rng_state(), before)  # building it leaves the global RNG alone
    net_b = load_lpips(pretrained=False)
    assert all(torch.equal(p, q) for p, q in zip(net_a.parameters(), net_b.parameters()))
    assert not any(p.requires_grad for p in net_a.parameters()) and not net_a.training
    # The linear heads are the calibrated ones shipped inside the lpips package.
    shipped = torch.load(Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    assert shipped and all(torch.equal(net_a.state_dict()[k], v) for k, v in shipped.items())
    x = smooth_images(size=64)  # AlexNet needs at least ~32 px
    assert torch.all(lpips_distance(net_a, x, x).abs() < 1e-6)
    assert torch.all(lpips_distance(net_a, x, x.flip(-1)) > 0)
    assert lpips_metric_name(False) == "lpips_randnet" and lpips_metric_name(True) == "lpips"


def test_pretrained_lpips_offline_without_cache_says_how_to_cache(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(UserError) as info:
        load_lpips(pretrained=True)
    message = str(info.value)
    assert "TORCH_HOME" in message and ALEXNET_CHECKPOINT in message and str(tmp_path) in message


def test_pretrained_lpips_reads_the_backbone_from_torch_home(monkeypatch, tmp_path):
    import torchvision

    # A stand-in AlexNet checkpoint at the path the error message names: every weight 0.01,
    # stored as stride-0 views of one number so the file stays tiny.
    shapes = {k: v.shape for k, v in torchvision.models.alexnet().state_dict().items()}
    fake = {k: torch.full((1,), 0.01).expand(shape) for k, shape in shapes.items()}
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(fake, folder / ALEXNET_CHECKPOINT)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("tried to download"))
    net = load_lpips(pretrained=True)
    first_conv = net.net.slice1[0].weight
    assert torch.all(first_conv == 0.01)
