"""preprocess: validate, convert, caption, resize and split `data/raw/` → `data/processed/`.

Bad files are skipped and counted by reason (never fatal); the result is a `datasets`
DatasetDict (train/val) on disk, and `metrics/data.json` says what was kept and why not.
"""

from __future__ import annotations

from pathlib import Path

from squeezegen.config import load_config
from squeezegen.tracking import stage_run

RAW_DIR = Path("data/raw")
PROCESSED_DIR = Path("data/processed")


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    from squeezegen.data.preprocess import preprocess

    cfg = load_config(params, profile=profile)
    with stage_run("preprocess", cfg) as run:
        stats = preprocess(
            RAW_DIR,
            PROCESSED_DIR,
            sd_size=cfg.data.sd_size,
            rq_size=cfg.data.rq_size,
            val_fraction=cfg.data.val_fraction,
            seed=cfg.seed,
            min_score=cfg.data.min_score,
            max_image_pixels=cfg.data.max_image_pixels,
        )
        run.write_metrics("data", stats)
    return stats
