"""fetch_base: `sd.base` (`tiny`, a hub id or a local folder) → `models/base/` (a diffusers pipeline folder).

Reads no data: the toy tokenizer is trained on the fixed caption corpus, so new data never
re-fetches the base model.
"""

from __future__ import annotations

from pathlib import Path

from squeezegen.config import load_config
from squeezegen.tracking import stage_run

BASE_DIR = Path("models/base")


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    from squeezegen.sd.hub import fetch_base

    cfg = load_config(params, profile=profile)
    with stage_run("fetch_base", cfg):
        fetch_base(cfg.sd.base, BASE_DIR, seed=cfg.seed)
    size = sum(p.stat().st_size for p in BASE_DIR.rglob("*") if p.is_file())
    print(f"fetch_base: {cfg.sd.base} → {BASE_DIR} ({size / 2**20:.1f} MiB)")
    return {"base": cfg.sd.base, "bytes": size}
