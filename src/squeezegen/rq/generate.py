"""The RQ generator: prior samples codes → RQ-VAE decodes → refiner adds detail.

    gen = RQGenerator.load("models/prior", "models/rqvae", "models/refiner")
    images, seconds = gen.generate(styles=["Cubism"] * 16, genres=["portrait"] * 16, scores=[80.0] * 16, seed=0)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from squeezegen.data.tensors import to_signed, to_uint8
from squeezegen.errors import UserError
from squeezegen.files import folder_bytes
from squeezegen.rq.model import RQVAE, count_parameters, load_rqvae
from squeezegen.rq.prior import ConditionedPrior, load_prior
from squeezegen.rq.sampling import marginal_codes, sample_codes


@torch.no_grad()
def encode_codes(rqvae: RQVAE, images: torch.Tensor, *, batch_size: int = 64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Codes (int64, CPU) of uint8 images (M, 3, H, W) under the frozen RQ-VAE: (M, N, L), or (M, T) for a pyramid."""
    rqvae.eval()
    out = [rqvae.encode(to_signed(images[i : i + batch_size].to(device))).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).long()


@dataclass
class RQGenerator:
    """The three models of the RQ branch, and what they cost (parameters, bytes on disk)."""

    prior: ConditionedPrior
    rqvae: RQVAE
    refiner: torch.nn.Module | None
    bytes_on_disk: dict[str, int]

    @classmethod
    def load(cls, prior_dir, rqvae_dir, refiner_dir=None, *, device: torch.device | str = "cpu") -> "RQGenerator":
        prior = load_prior(prior_dir, device)
        rqvae = load_rqvae(rqvae_dir, device)
        if (prior.spec.levels, prior.spec.codebook_size) != (rqvae.levels, rqvae.codebook_size):
            raise UserError(
                f"{prior_dir} models {prior.spec.levels} levels × {prior.spec.codebook_size} codes but {rqvae_dir} has "
                f"{rqvae.levels} × {rqvae.codebook_size}; re-run `dvc repro train_prior`"
            )
        spec = prior.spec
        if spec.kind == "next_scale" and tuple(rqvae.level_sides(spec.scales[-1])) != spec.scales:
            raise UserError(
                f"{prior_dir} draws scales {list(spec.scales)} but {rqvae_dir} quantizes "
                f"{rqvae.level_sides(spec.scales[-1])}; re-run `dvc repro train_prior`"
            )
        if spec.kind == "rq_transformer" and rqvae.pyramid:
            raise UserError(f"{prior_dir} is an RQ-Transformer but {rqvae_dir} is a pyramid RQ-VAE; re-run `dvc repro train_prior`")
        refiner = None
        sizes = {"prior": folder_bytes(prior_dir), "rqvae": folder_bytes(rqvae_dir)}
        if refiner_dir is not None:
            from squeezegen.rq.refiner import load_refiner  # diffusers: slow to import, only when refining

            refiner = load_refiner(refiner_dir, device).eval()
            sizes["refiner"] = folder_bytes(refiner_dir)
        return cls(prior, rqvae, refiner, sizes)

    @property
    def params(self) -> dict[str, int]:
        counts = {"prior": count_parameters(self.prior), "rqvae": count_parameters(self.rqvae)}
        if self.refiner is not None:
            counts["refiner"] = count_parameters(self.refiner)
        return counts

    @property
    def grid_hw(self) -> tuple[int, int]:
        h, w = self.prior.spec.grid_hw
        return (h, w) if h and w else (int(self.prior.spec.positions ** 0.5),) * 2

    @torch.no_grad()
    def encode(self, images: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
        """Codes of uint8 images (M, 3, H, W), in the layout `sample` returns and `decode` takes."""
        return encode_codes(self.rqvae, images, batch_size=batch_size, device=next(self.rqvae.parameters()).device)

    def sample(self, *, styles: Sequence[str | None], genres: Sequence[str | None], scores: Sequence[float | None],
               seed: int, **sampling: Any) -> torch.Tensor:
        """Codes of one batch of len(styles) samples, drawn by the prior (one seed for the batch), in
        the RQ-VAE's layout (a next-scale prior's tokens are unflattened). `sampling`: `sample_codes`'
        guidance_scale, score_guidance_scale, temperature, top_k and desc."""
        codes = sample_codes(self.prior, styles=styles, genres=genres, scores=scores, seed=seed, **sampling)
        return self.rqvae.from_tokens(codes) if self.prior.spec.kind == "next_scale" else codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, *, refine: bool = True, levels: int | None = None, batch_size: int = 64) -> torch.Tensor:
        """uint8 images (n, 3, H, W) from codes in the RQ-VAE's layout (their first `levels` levels; None: all)."""
        device = next(self.rqvae.parameters()).device
        out = []
        for i in range(0, len(codes), batch_size):
            x = self.rqvae.decode_indices(codes[i : i + batch_size].to(device), levels=levels, grid_hw=self.grid_hw).clamp(-1, 1)
            if refine and self.refiner is not None:
                x = self.refiner(x).clamp(-1, 1)
            out.append(to_uint8(x).cpu())
        return torch.cat(out)

    def generate(
        self,
        *,
        styles: Sequence[str | None],
        genres: Sequence[str | None],
        scores: Sequence[float | None],
        seed: int,
        refine: bool = True,
        batch_size: int = 32,
        **sampling: Any,
    ) -> tuple[torch.Tensor, float]:
        """(uint8 images (n, 3, H, W), seconds per image). Batch i is sampled with seed + i, so the
        same arguments always give the same images. `sampling`: `sample`'s guidance, temperature and top_k."""
        started = time.perf_counter()
        images = []
        for i, start in enumerate(range(0, len(styles), batch_size)):
            part = slice(start, start + batch_size)
            codes = self.sample(styles=styles[part], genres=genres[part], scores=scores[part], seed=seed + i,
                                desc=f"sample batch {i + 1}", **sampling)
            images.append(self.decode(codes, refine=refine))
        images = torch.cat(images)
        return images, (time.perf_counter() - started) / max(len(images), 1)

    def generate_marginal(self, train_codes: torch.Tensor, *, n: int, seed: int, refine: bool = True) -> torch.Tensor:
        """The baseline: codes drawn independently per position and level from their train frequencies."""
        return self.decode(marginal_codes(train_codes, n=n, seed=seed), refine=refine)
