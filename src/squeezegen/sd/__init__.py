"""Stable Diffusion branch: the base pipeline (`hub.fetch_base`: hub id, local folder or the offline
`tiny.build_tiny_pipeline`), LoRA fine-tuning through the shared loop (`lora.train_lora`), plain
generation (`generate.generate`), and the compressed pipeline with its memory benchmark
(`compressed`, `benchmark`).
"""
