"""fetch_data: bring the images and their LAPIS-style records into `data/raw/`.

Sources (`data.source`): `synthetic` generates seeded abstract art offline (toy profile);
`lapis` reads the gated LAPIS archive from `data.lapis_path`; `folder` takes any folder of
images from `data.folder_path`. Every source writes the same layout (images/, records.jsonl,
manifest.json), atomically.
"""

from __future__ import annotations

from pathlib import Path

from squeezegen.config import load_config
from squeezegen.tracking import stage_run

RAW_DIR = Path("data/raw")


def fetch(cfg, out_dir: Path = RAW_DIR) -> dict:
    """Fetch `cfg.data.source` into `out_dir`; returns the manifest (source, params, counts, sha256)."""
    data = cfg.data
    if data.source == "synthetic":
        from squeezegen.data.synthetic import generate_synthetic

        return generate_synthetic(
            out_dir, num_images=data.num_images, image_size=max(data.sd_size, data.rq_size), seed=cfg.seed
        )
    if data.source == "lapis":
        from squeezegen.data.lapis import fetch_lapis

        return fetch_lapis(out_dir, path=Path(data.lapis_path), max_images=data.max_images)
    from squeezegen.data.folder import fetch_folder

    return fetch_folder(out_dir, path=Path(data.folder_path), max_images=data.max_images)


def main(params: str = "params.yaml", profile: str | None = None) -> dict:
    cfg = load_config(params, profile=profile)
    with stage_run("fetch_data", cfg):
        manifest = fetch(cfg)
    print(f"fetch_data: {cfg.data.source} → {RAW_DIR}")
    return {"source": manifest["source"], **manifest["counts"]}
