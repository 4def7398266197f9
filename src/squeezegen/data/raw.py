"""The raw layout every source writes and preprocess reads.

```
<out>/images/<image_id>.<ext>   source files copied as-is (or generated PNGs)
<out>/records.jsonl             one JSON object per image, keys RECORD_KEYS, sorted by image_id
<out>/manifest.json             source, params, counts, sha256 of every file
```

Every source's counts hold `n_in` (images the source held) and `images_lost_by_reason`, so
that n_in = n_images + the sum of the losses; preprocess copies them into metrics/data.json.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterable, Iterator

from squeezegen.errors import UserError
from squeezegen.files import atomic_path, sha256_file

RECORD_KEYS = ("image_id", "file", "style", "genre", "score", "n_ratings", "caption", "lapis_image_id")
RECORDS_NAME = "records.jsonl"
MANIFEST_NAME = "manifest.json"
IMAGES_DIR = "images"
_JUNK_NAMES = {"thumbs.db", "ehthumbs.db", "desktop.ini"}


def make_record(
    image_id: str,
    file: str,
    *,
    style: str | None = None,
    genre: str | None = None,
    score: float | None = None,
    n_ratings: int | None = None,
    caption: str | None = None,
    lapis_image_id: int | None = None,
) -> dict[str, Any]:
    """One raw record with every key of RECORD_KEYS (missing values are None).

    `lapis_image_id` is LAPIS's own numeric id of the image, kept so results join back to LAPIS.
    """
    return {
        "image_id": image_id,
        "file": file,
        "style": style,
        "genre": genre,
        "score": None if score is None else float(score),
        "n_ratings": None if n_ratings is None else int(n_ratings),
        "caption": caption,
        "lapis_image_id": None if lapis_image_id is None else int(lapis_image_id),
    }


def is_junk(rel_path: str) -> bool:
    """OS litter, not data: hidden files (`.DS_Store`, `._x.jpg`), `__MACOSX/`, `Thumbs.db`, `desktop.ini`."""
    parts = rel_path.replace("\\", "/").split("/")
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in _JUNK_NAMES


def safe_image_id(text: str) -> str:
    """A file-name-safe id: path separators become "__", other odd characters "_"."""
    text = text.replace("\\", "/").strip("/").replace("/", "__")
    return re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".") or "image"


def unique_image_ids(rel_paths: Iterable[str]) -> dict[str, str]:
    """File-name-safe, unique image ids for relative paths, from the path without its extension.

    "a/b.jpg" → "a__b"; if two paths would collide ("x.jpg", "x.png") the later ones (in sorted
    order) keep their extension ("x.png"), and a counter is added if even that collides.
    """
    ids: dict[str, str] = {}
    used: set[str] = set()
    for rel in sorted(rel_paths):
        stem = rel.rsplit(".", 1)[0] if "." in rel.rsplit("/", 1)[-1] else rel
        candidate = safe_image_id(stem)
        if candidate in used:
            candidate = safe_image_id(rel)
        base, n = candidate, 2
        while candidate in used:
            candidate, n = f"{base}-{n}", n + 1
        ids[rel] = candidate
        used.add(candidate)
    return ids


def hash_fraction(key: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, key): stable whatever other keys exist."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@contextlib.contextmanager
def raw_output(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary folder (with `images/` made) that replaces `out_dir` on success."""
    with atomic_path(out_dir) as tmp:
        (tmp / IMAGES_DIR).mkdir(parents=True)
        yield tmp


def write_records_and_manifest(
    root: Path,
    records: Iterable[dict[str, Any]],
    *,
    source: str,
    params: dict[str, Any],
    counts: dict[str, Any],
) -> dict[str, Any]:
    """Write records.jsonl (sorted by image_id) and manifest.json into `root`; return the manifest.

    The manifest holds `source`, `params` (exactly what the caller passes: never a secret),
    `counts` (plus n_images) and the sha256 of every image and of records.jsonl.
    """
    rows = sorted(records, key=lambda r: r["image_id"])
    lines = [json.dumps({k: r[k] for k in RECORD_KEYS}, ensure_ascii=False, allow_nan=False) for r in rows]
    (root / RECORDS_NAME).write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    sha256 = {r["file"]: sha256_file(root / r["file"]) for r in rows}
    sha256[RECORDS_NAME] = sha256_file(root / RECORDS_NAME)
    manifest = {
        "source": source,
        "params": params,
        "counts": {"n_images": len(rows), **counts},
        "sha256": sha256,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False) + "\n"
    (root / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return manifest


def read_records(raw_dir: str | Path) -> list[dict[str, Any]]:
    """Read `<raw_dir>/records.jsonl`; UserError if it is missing or a line is not a JSON object."""
    path = Path(raw_dir) / RECORDS_NAME
    if not path.is_file():
        raise UserError(f"{path} does not exist: run the fetch_data stage first (it writes the raw layout there)")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg}); re-run fetch_data") from None
            if not isinstance(row, dict) or not row.get("image_id") or not row.get("file"):
                raise UserError(f"{path}:{lineno}: a record needs at least image_id and file; re-run fetch_data")
            records.append({k: row.get(k) for k in RECORD_KEYS})
    return records


def fetch_counts(raw_dir: str | Path) -> dict[str, Any]:
    """The counts of `<raw_dir>/manifest.json` that are numbers (or dicts of numbers), for metrics.

    They say what the source held (`n_in`), what was written (`n_images`) and what was lost on
    the way and why; {} if there is no manifest (a raw layout written by hand).
    """
    path = Path(raw_dir) / MANIFEST_NAME
    if not path.is_file():
        return {}
    try:
        counts = json.loads(path.read_text(encoding="utf-8")).get("counts", {})
    except (json.JSONDecodeError, AttributeError) as err:
        raise UserError(f"{path} is not a valid manifest ({err}); re-run fetch_data") from None
    if not isinstance(counts, dict):
        raise UserError(f"{path}: `counts` is not an object; re-run fetch_data")

    def is_number(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    return {
        key: value for key, value in sorted(counts.items())
        if is_number(value) or (isinstance(value, dict) and all(is_number(v) for v in value.values()))
    }
