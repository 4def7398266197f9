"""Stable Diffusion branch.

- `hub`, `tiny`, `sd15`: the base pipeline (a hub id, a local folder or the offline tiny one).
- `lora`: LoRA fine-tuning through the shared loop (`lora.train_lora`).
- `generate`: plain text-to-image with the base (+ LoRA) (`generate_image`).
- `configurations`: one pipeline per memory configuration, and generation with a probe per phase.
- `lean`, `residency`, `cuda_graph`: the lean runtime (phase residency, serial CFG, CUDA graphs).
- `benchmark`, `benchmark_report`: the memory benchmark, and its table, charts and CSV.
"""
