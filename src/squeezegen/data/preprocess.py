"""Raw layout → HF `datasets` DatasetDict({"train", "val"}) on disk, ready for training.

Each image is decoded and validated (`images.load_rgb`: bad files are skipped and counted by
reason, never fatal), converted to RGB, center-cropped and resized once per training
resolution, and captioned from its style and genre unless the record brings a caption. The
train/val split is a hash of (seed, image_id): an image's split never changes when others are
added or removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import datasets
import numpy as np
from tqdm import tqdm

from squeezegen.data.captions import caption_for
from squeezegen.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageRejected, center_square_resize, load_rgb, png_encode
from squeezegen.data.raw import fetch_counts, hash_fraction, read_records
from squeezegen.errors import UserError
from squeezegen.files import atomic_path

log = logging.getLogger(__name__)

# Every reason a record can be skipped for; stats list them all (zeros included) so that
# metrics files always have the same keys.
SKIP_REASONS = (
    "missing_file", "empty", "not_an_image", "corrupt", "truncated", "too_large", "unsupported_mode",
    "below_min_score", "duplicate_id",
)

METADATA_COLUMNS = ("image_id", "caption", "style", "genre", "score", "n_ratings", "lapis_image_id")
FEATURES = datasets.Features({
    "image_id": datasets.Value("string"),
    "image_sd": datasets.Image(),
    "image_rq": datasets.Image(),
    "caption": datasets.Value("string"),
    "style": datasets.Value("string"),
    "genre": datasets.Value("string"),
    "score": datasets.Value("float64"),
    "n_ratings": datasets.Value("int32"),
    "lapis_image_id": datasets.Value("int64"),  # LAPIS's own id (None for other sources): joins back to LAPIS
})


def split_ids(image_ids: list[str], *, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic train/val split: an id is val when hash(seed, id) < val_fraction.

    Stable: an id's split depends only on (seed, id). With n ≥ 2 ids both splits are non-empty:
    if val came out empty the id with the smallest hash moves to val (if train did, the largest
    moves to train), the least arbitrary choice; a single id goes to train. Returns (train, val),
    each sorted.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    ids = sorted(set(image_ids))
    u = {i: hash_fraction(i, seed) for i in ids}
    val = [i for i in ids if u[i] < val_fraction]
    train = [i for i in ids if u[i] >= val_fraction]
    if len(ids) == 1:  # a lone image is for training
        return ids, []
    if not val:
        moved = min(train, key=u.__getitem__)
        train.remove(moved)
        val = [moved]
    elif not train:
        moved = max(val, key=u.__getitem__)
        val.remove(moved)
        train = [moved]
    return train, val


def _clean_score(value: Any) -> float | None:
    if value is None:
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        return None
    return score if math.isfinite(score) else None


def _clean_int(value: Any) -> int | None:
    score = _clean_score(value)
    return int(score) if score is not None and score.is_integer() else None


def _rows(rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Generator for Dataset.from_generator: reads the processed PNGs back from the scratch folder."""
    for row in rows:
        yield {
            **{column: row[column] for column in METADATA_COLUMNS},
            "image_sd": {"bytes": Path(row["sd_path"]).read_bytes(), "path": None},
            "image_rq": {"bytes": Path(row["rq_path"]).read_bytes(), "path": None},
        }


def _build_split(name: str, rows: list[dict[str, Any]], cache_dir: Path) -> datasets.Dataset:
    """One split, streamed from the scratch PNGs into Arrow (memory stays flat however many images)."""
    if not rows:
        return datasets.Dataset.from_dict({column: [] for column in FEATURES}, features=FEATURES, split=name)
    # The fingerprint (saved in state.json) is a hash of the content, not of the scratch paths
    # datasets would hash by default: the same data gives byte-identical output folders.
    content = hashlib.sha256(name.encode())
    for row in rows:
        content.update(json.dumps([row[column] for column in METADATA_COLUMNS]).encode() + row["digest"].encode())
    return datasets.Dataset.from_generator(
        _rows,
        features=FEATURES,
        gen_kwargs={"rows": rows},
        cache_dir=str(cache_dir),  # a fresh folder: the builder never reuses a stale cache
        split=datasets.NamedSplit(name),
        fingerprint=content.hexdigest()[:16],
    )


def preprocess(
    raw_dir: str | Path,
    out_dir: str | Path,
    *,
    sd_size: int,
    rq_size: int,
    val_fraction: float,
    seed: int,
    min_score: float | None = None,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> dict[str, Any]:
    """Decode, validate, resize and split the raw layout at `raw_dir`; save a DatasetDict at `out_dir`.

    Columns: image_id, image_sd (sd_size² RGB), image_rq (rq_size² RGB), caption, style, genre,
    score (float or None), n_ratings (int or None), lapis_image_id (int or None). `min_score` drops records whose score is
    below it; records without a score are KEPT (a folder of unrated images must not vanish
    because a threshold is set). Files over `max_image_pixels` pixels are refused from their
    header. Writes `out_dir` atomically. Returns stats: n_in, n_kept, n_skipped,
    skipped_by_reason, n_train, n_val, score_mean, score_std (over kept images with a score;
    None if none), fetch (the numeric counts of the fetch step's manifest: what the source held
    and lost before preprocessing), perf: {seconds} (the only machine-dependent figure).
    UserError if no image survives.
    """
    start = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if min(sd_size, rq_size) < 1:
        raise UserError(f"sd_size and rq_size must be positive, got {sd_size} and {rq_size}")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    records = read_records(raw_dir)
    min_side = max(sd_size, rq_size)  # JPEGs may decode at a reduced scale down to this
    skipped = dict.fromkeys(SKIP_REASONS, 0)
    kept: dict[str, dict[str, Any]] = {}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.scratch.", dir=out_dir.parent) as scratch_name:
        scratch = Path(scratch_name)
        for record in tqdm(records, desc="preprocess", unit="img"):
            image_id = record["image_id"]
            score = _clean_score(record["score"])
            reason = None
            if image_id in kept:
                reason = "duplicate_id"
            elif min_score is not None and score is not None and score < min_score:
                reason = "below_min_score"
            if reason is None:
                try:
                    image = load_rgb(raw_dir / record["file"], max_image_pixels=max_image_pixels, min_side=min_side)
                except ImageRejected as err:
                    reason = err.reason
                    log.info("skipping %s (%s)", image_id, err)
            if reason is not None:
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
            sd_png = png_encode(center_square_resize(image, sd_size))
            rq_png = sd_png if rq_size == sd_size else png_encode(center_square_resize(image, rq_size))
            sd_path, rq_path = scratch / f"{len(kept)}_sd.png", scratch / f"{len(kept)}_rq.png"
            sd_path.write_bytes(sd_png)
            rq_path.write_bytes(rq_png)
            n_ratings = record["n_ratings"]
            kept[image_id] = {
                "image_id": image_id,
                "caption": record["caption"] if isinstance(record["caption"], str) and record["caption"].strip()
                else caption_for(record["style"], record["genre"]),
                "style": record["style"],
                "genre": record["genre"],
                "score": score,
                "n_ratings": None if n_ratings is None else int(n_ratings),
                "lapis_image_id": _clean_int(record["lapis_image_id"]),
                "sd_path": str(sd_path),
                "rq_path": str(rq_path),
                "digest": hashlib.sha256(sd_png + rq_png).hexdigest(),
            }
        if not kept:
            reasons = ", ".join(f"{k}: {v}" for k, v in skipped.items() if v) or "no records"
            raise UserError(
                f"preprocess kept no image out of {len(records)} records in {raw_dir} ({reasons}). "
                "Check the fetched data (data/raw/images), lower data.min_score or raise data.max_image_pixels."
            )
        train_ids, val_ids = split_ids(list(kept), val_fraction=val_fraction, seed=seed)
        splits = datasets.DatasetDict({
            "train": _build_split("train", [kept[i] for i in train_ids], scratch / "hf_cache_train"),
            "val": _build_split("val", [kept[i] for i in val_ids], scratch / "hf_cache_val"),
        })
        with atomic_path(out_dir) as tmp:
            # an empty split needs one explicit (empty) shard, or load_from_disk fails on it
            splits.save_to_disk(str(tmp), num_shards={name: 1 for name, split in splits.items() if len(split) == 0})
    scores = np.array([r["score"] for r in kept.values() if r["score"] is not None], dtype=np.float64)
    return {
        "n_in": len(records),
        "n_kept": len(kept),
        "n_skipped": sum(skipped.values()),
        "skipped_by_reason": skipped,
        "n_train": len(train_ids),
        "n_val": len(val_ids),
        "score_mean": float(scores.mean()) if scores.size else None,
        "score_std": float(scores.std()) if scores.size else None,
        "fetch": fetch_counts(raw_dir),
        "perf": {"seconds": round(time.perf_counter() - start, 3)},
    }
