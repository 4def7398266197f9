"""Image-quality metrics shared by the whole project: PSNR, SSIM and the LPIPS loading rule.

Conventions: images are float tensors shaped (B, C, H, W) with values in [-1, 1] (what the
models produce and the LPIPS network expects). Images in [0, 1] are supported by passing
`value_range=(0.0, 1.0)`. Every metric returns one value per image, shape (B,); average it
yourself.

LPIPS rule: `load_lpips(pretrained=True)` is the real metric (AlexNet ImageNet backbone + the
calibrated linear heads that ship inside the `lpips` package); the backbone weights come from
torchvision's cache under `$TORCH_HOME` (or a download). `load_lpips(pretrained=False)` keeps the
calibrated heads but uses a seeded random backbone: it runs offline and is useful as a training
loss and a smoke test, but it is NOT the LPIPS metric, so results are reported as
`lpips_randnet` (see `lpips_metric_name`).
"""

from __future__ import annotations

import urllib.error
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from squeezegen.errors import UserError

PSNR_CAP_DB = 100.0  # PSNR of identical images (the true value is +inf, which JSON cannot hold)
ALEXNET_CHECKPOINT = "alexnet-owt-7be5be79.pth"  # torchvision's file name for AlexNet ImageNet weights
RANDNET_SEED = 0  # the random LPIPS backbone is seeded, so `lpips_randnet` is the same network everywhere


def _data_range(value_range: tuple[float, float]) -> float:
    low, high = value_range
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    return high - low


def psnr(a: torch.Tensor, b: torch.Tensor, *, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, shape (B,).

    `a`, `b`: (B, C, H, W) in `value_range` (default [-1, 1]; pass (0, 1) for [0, 1] images).
    Identical images give `PSNR_CAP_DB` instead of +inf.
    """
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    peak = _data_range(value_range)
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
    floor = peak**2 * 10 ** (-PSNR_CAP_DB / 10)  # the MSE at which PSNR reaches the cap
    return 10 * torch.log10(peak**2 / mse.clamp_min(floor))  # (B,)


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    coords = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    window = torch.outer(g, g)  # (size, size), sums to 1
    return window.expand(channels, 1, size, size).contiguous()  # (C, 1, size, size) for a grouped conv


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    value_range: tuple[float, float] = (-1.0, 1.0),
    window_size: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, shape (B,).

    Gaussian 11×11 window (σ = 1.5), K1 = 0.01, K2 = 0.03, statistics per channel over the
    valid region (no padding), averaged over channels and positions: the same numbers as
    scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)` (checked to 1e-7). Written here because no dependency of the
    project (torch, torchvision, diffusers) provides SSIM. Images smaller than the window use a
    window as large as the image allows.
    """
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim: need two (B, C, H, W) tensors of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    peak = _data_range(value_range)
    # float64: the variances come from E[x²] − μ², which cancels badly in float32 on flat regions
    x, y = a.double() - value_range[0], b.double() - value_range[0]
    channels, height, width = x.shape[1:]
    size = min(window_size, height, width)
    size -= 1 - size % 2  # keep it odd so the window has a centre
    window = _gaussian_window(size, sigma, channels, x.device, x.dtype)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)  # (B, C, H-size+1, W-size+1)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(dim=1).to(a.dtype)  # (B,)


def lpips_metric_name(pretrained: bool) -> str:
    """`lpips` for the real metric, `lpips_randnet` for the random-backbone stand-in."""
    return "lpips" if pretrained else "lpips_randnet"


def _lpips_cache_hint() -> str:
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"  # $TORCH_HOME/hub/checkpoints
    return (
        "LPIPS needs torchvision's AlexNet ImageNet weights and could not load them. Either run once with "
        f"internet access (they are cached under {checkpoints}/), or copy "
        f"{ALEXNET_CHECKPOINT} (from https://download.pytorch.org/models/{ALEXNET_CHECKPOINT}) into "
        "<folder>/hub/checkpoints/ and set TORCH_HOME=<folder>; offline, set the profile's "
        "refiner.lpips_pretrained: false to use the random-backbone stand-in (reported as lpips_randnet)"
    )


def load_lpips(pretrained: bool, device: torch.device | str = "cpu") -> torch.nn.Module:
    """An LPIPS(net="alex") network in eval mode with frozen parameters, on `device`.

    Call it as `net(a, b)` on images in [-1, 1] → distances shaped (B, 1, 1, 1).
    pretrained=True: ImageNet AlexNet backbone from `$TORCH_HOME/hub/checkpoints/` (downloaded if
    missing and online); if that fails, raises UserError saying how to cache the weights.
    pretrained=False: seeded random backbone (`pnet_rand=True`), offline; the calibrated linear
    heads are loaded in both cases (they ship inside the `lpips` package).
    """
    import lpips

    with warnings.catch_warnings():  # lpips calls torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        net = _build_lpips(lpips, pretrained)
    net.eval().requires_grad_(False)
    return net.to(device)


def _build_lpips(lpips, pretrained: bool) -> torch.nn.Module:
    if pretrained:
        try:
            return lpips.LPIPS(net="alex", verbose=False)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise UserError(f"{_lpips_cache_hint()} (cause: {exc})") from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDNET_SEED)
        return lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)


def lpips_distance(net: torch.nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS distance per image, shape (B,), for (B, 3, H, W) images in [-1, 1]."""
    return net(a, b).flatten()  # (B,)


def mean_of(values: torch.Tensor) -> float:
    """A per-image metric tensor averaged to a plain float (for JSON)."""
    return float(values.double().mean())
