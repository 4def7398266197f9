"""The RQ branch: a residual-quantized VAE (an image → a grid of codes, each refined by L
residual levels, coarse to fine) and a refinement UNet that restores the detail its decoder
averages away.

- `model`: the RQ-VAE (`RQVAE`, `save_rqvae`, `load_rqvae`).
- `refiner`: the refinement UNet (`Refiner`, `save_refiner`, `load_refiner`).
- `recon_train`: the RQ-VAE's and the refiner's losses and training entry points (shared loop).
- `evaluation`: val metrics (per level too) and `reconstruct_image` for the CLI.
- `pictures`: the progressive picture (original | 1 level | … | L | refined).
- `prior`, `next_scale`, `prior_train`, `sampling`: the conditional priors over the codes (an
  RQ-Transformer, or a next-scale transformer for a pyramid), their training and sampling.
- `generate`: `RQGenerator`, prior + RQ-VAE + refiner loaded together, as `squeezegen sample` uses it.
"""
