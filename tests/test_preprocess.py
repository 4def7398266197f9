"""preprocess: validation of awkward files, RGB conversion, resizing, captions, score filter, split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from data_fixtures import LAPIS_EXPECTED, LAPIS_LOSSES, write_bad_image_folder, write_lapis_folder
from datasets import load_from_disk
from PIL import Image

from squeezegen.data.captions import caption_for
from squeezegen.data.folder import fetch_folder
from squeezegen.data.images import load_rgb
from squeezegen.data.lapis import fetch_lapis
from squeezegen.data.preprocess import SKIP_REASONS, preprocess, split_ids
from squeezegen.data.raw import make_record
from squeezegen.data.synthetic import generate_synthetic
from squeezegen.errors import UserError

# ----------------------------------------------------------------------------------------- split


def test_split_is_deterministic_disjoint_and_stable_when_ids_change():
    ids = [f"img{i:04d}" for i in range(400)]
    train, val = split_ids(ids, val_fraction=0.2, seed=7)
    assert (train, val) == split_ids(list(reversed(ids)), val_fraction=0.2, seed=7)
    assert not set(train) & set(val) and set(train) | set(val) == set(ids)
    assert 0.14 < len(val) / len(ids) < 0.26
    assert split_ids(ids, val_fraction=0.2, seed=8)[1] != val
    # add 100 ids and drop 50: every surviving id keeps its split
    train2, val2 = split_ids(ids[50:] + [f"new{i}" for i in range(100)], val_fraction=0.2, seed=7)
    assert set(val2) & set(ids) == set(val) - set(ids[:50])
    assert set(train2) & set(ids) == set(train) - set(ids[:50])


@pytest.mark.parametrize("fraction", [0.001, 0.999])
def test_split_keeps_both_sides_non_empty(fraction):
    for n in (2, 3, 5):
        train, val = split_ids([f"x{i}" for i in range(n)], val_fraction=fraction, seed=0)
        assert len(train) >= 1 and len(val) >= 1 and len(train) + len(val) == n
    assert split_ids(["only"], val_fraction=fraction, seed=0) == (["only"], [])


def test_split_rejects_bad_fraction():
    with pytest.raises(UserError, match="val_fraction"):
        split_ids(["a", "b"], val_fraction=1.0, seed=0)


# ----------------------------------------------------------------------------------- preprocess


def test_synthetic_end_to_end_columns_sizes_captions(tmp_path):
    generate_synthetic(tmp_path / "raw", num_images=12, image_size=40, seed=1)
    stats = preprocess(tmp_path / "raw", tmp_path / "processed", sd_size=32, rq_size=16, val_fraction=0.25, seed=1)
    ds = load_from_disk(str(tmp_path / "processed"))
    assert set(ds) == {"train", "val"}
    assert stats["n_in"] == stats["n_kept"] == 12 and stats["n_skipped"] == 0
    assert (stats["n_train"], stats["n_val"]) == (len(ds["train"]), len(ds["val"])) and stats["n_val"] >= 1
    assert set(stats["skipped_by_reason"]) == set(SKIP_REASONS)
    lines = (tmp_path / "raw/records.jsonl").read_text().splitlines()
    raw = {record["image_id"]: record for record in map(json.loads, lines)}
    scores = [r["score"] for r in raw.values()]
    assert stats["score_mean"] == pytest.approx(np.mean(scores)) and stats["score_std"] == pytest.approx(np.std(scores))
    for row in ds["train"]:
        assert row["image_sd"].size == (32, 32) and row["image_rq"].size == (16, 16)
        assert row["image_sd"].mode == "RGB" and row["image_rq"].mode == "RGB"
        source = raw[row["image_id"]]
        assert row["caption"] == caption_for(source["style"], source["genre"])
        assert row["score"] == pytest.approx(source["score"]) and row["n_ratings"] == source["n_ratings"]
    # the 40 px original, center-cropped and resized to 32, is close to a direct resize
    row = ds["train"][0]
    with Image.open(tmp_path / "raw" / raw[row["image_id"]]["file"]) as source_image:
        original = source_image.convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
    diff = np.abs(np.asarray(original, np.int16) - np.asarray(row["image_sd"], np.int16))
    assert diff.mean() < 4


def test_preprocess_output_is_byte_identical_across_runs(tmp_path):
    generate_synthetic(tmp_path / "raw", num_images=6, image_size=24, seed=2)
    for name in ("a", "b"):
        preprocess(tmp_path / "raw", tmp_path / name, sd_size=16, rq_size=8, val_fraction=0.3, seed=5)

    def tree(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    assert tree(tmp_path / "a") == tree(tmp_path / "b")  # DVC sees the same output hash


def test_single_image_goes_to_train_with_an_empty_val_split(tmp_path):
    generate_synthetic(tmp_path / "raw", num_images=1, image_size=16, seed=0)
    stats = preprocess(tmp_path / "raw", tmp_path / "out", sd_size=8, rq_size=8, val_fraction=0.5, seed=0)
    ds = load_from_disk(str(tmp_path / "out"))
    assert (stats["n_train"], stats["n_val"], len(ds["train"]), len(ds["val"])) == (1, 0, 1, 0)
    assert ds["val"].features == ds["train"].features


def test_bad_files_are_skipped_by_reason_and_the_rest_converted(tmp_path):
    expected = write_bad_image_folder(tmp_path / "src")
    fetch_folder(tmp_path / "raw", path=tmp_path / "src")
    stats = preprocess(tmp_path / "raw", tmp_path / "processed", sd_size=16, rq_size=8, val_fraction=0.3, seed=0,
                       max_image_pixels=10_000_000)
    want = {reason: list(expected.values()).count(reason) for reason in set(expected.values()) - {"ok"}}
    assert {k: v for k, v in stats["skipped_by_reason"].items() if v} == want
    n_ok = list(expected.values()).count("ok")
    assert stats["n_kept"] == n_ok and stats["n_skipped"] == len(expected) - n_ok
    assert stats["score_mean"] is None and stats["score_std"] is None
    ds = load_from_disk(str(tmp_path / "processed"))
    rows = {r["image_id"]: r for split in ("train", "val") for r in ds[split]}
    assert set(rows) == {"cmyk", "gray16", "transparent", "palette", "gray", "sub__deeper__ok"}
    for row in rows.values():
        assert row["image_sd"].mode == "RGB" and row["image_sd"].size == (16, 16) and row["image_rq"].size == (8, 8)
        assert row["caption"] == "a painting" and row["score"] is None and row["n_ratings"] is None

    def center(image_id):
        return np.asarray(rows[image_id]["image_sd"], np.int16)[8, 8]

    assert np.abs(center("gray16") - 128).max() <= 1  # 16-bit scaled to 8-bit, not clipped to white
    assert (center("transparent") >= 254).all()  # composited on white
    assert np.abs(center("gray") - 77).max() <= 1
    red = center("cmyk")
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_too_large_is_judged_from_the_header_with_the_given_limit(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    Image.new("RGB", (50, 40), (1, 2, 3)).save(src / "big.png")
    Image.new("RGB", (20, 20), (1, 2, 3)).save(src / "small.png")
    fetch_folder(tmp_path / "raw", path=src)
    stats = preprocess(
        tmp_path / "raw", tmp_path / "out", sd_size=8, rq_size=8, val_fraction=0.5, seed=0, max_image_pixels=1000
    )
    assert stats["skipped_by_reason"]["too_large"] == 1 and stats["n_kept"] == 1


def _write_raw(root, records, images):
    """A raw layout written by hand (records may name files that do not exist)."""
    (root / "images").mkdir(parents=True)
    for name, color in images.items():
        Image.new("RGB", (12, 12), color).save(root / "images" / name)
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_min_score_filters_rated_images_keeps_unrated_and_given_captions_win(tmp_path):
    images = {f"{c}.png": (i * 40, 100, 100) for i, c in enumerate("abcde")}
    records = [
        make_record("a", "images/a.png", style="Baroque", genre="portrait", score=30.0, n_ratings=20),
        make_record("b", "images/b.png", style="Baroque", genre="portrait", score=49.9),
        make_record("c", "images/c.png", style="Rococo", genre="landscape", score=50.0, caption="my own words"),
        make_record("d", "images/d.png", style="Cubism", genre="still life", score=None),
        make_record("e", "images/e.png", score=88.0),
        make_record("f", "images/missing.png", score=90.0),
    ]
    _write_raw(tmp_path / "raw", records, images)
    stats = preprocess(tmp_path / "raw", tmp_path / "out", sd_size=8, rq_size=8, val_fraction=0.5, seed=0, min_score=50)
    assert stats["skipped_by_reason"]["below_min_score"] == 2 and stats["skipped_by_reason"]["missing_file"] == 1
    ds = load_from_disk(str(tmp_path / "out"))
    rows = {r["image_id"]: r for split in ("train", "val") for r in ds[split]}
    assert set(rows) == {"c", "d", "e"}
    assert rows["c"]["caption"] == "my own words"
    assert rows["d"]["caption"] == "a cubist still life painting" and rows["d"]["score"] is None
    assert stats["score_mean"] == pytest.approx(69.0) and stats["score_std"] == pytest.approx(19.0)


def test_nothing_kept_is_a_user_error_and_writes_nothing(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_text("text")
    (src / "b.jpg").write_bytes(b"")
    fetch_folder(tmp_path / "raw", path=src)
    with pytest.raises(UserError, match="kept no image") as err:
        preprocess(tmp_path / "raw", tmp_path / "out", sd_size=8, rq_size=8, val_fraction=0.5, seed=0)
    assert "not_an_image: 1" in str(err.value) and "empty: 1" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "src"]  # no output, no scratch left behind


def test_missing_raw_dir_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="fetch_data"):
        preprocess(tmp_path / "nope", tmp_path / "out", sd_size=8, rq_size=8, val_fraction=0.5, seed=0)


def test_large_jpeg_decodes_at_reduced_scale_but_not_below_min_side(tmp_path):
    Image.new("RGB", (1000, 700), (90, 20, 160)).save(tmp_path / "big.jpg", quality=90)
    image = load_rgb(tmp_path / "big.jpg", min_side=64)
    assert 64 <= min(image.size) < 700 and image.size[0] > image.size[1]
    assert load_rgb(tmp_path / "big.jpg").size == (1000, 700)


# ----------------------------------------------------------------------- what fetch lost, in the metrics


def test_lapis_id_survives_and_fetch_losses_reach_the_stats(tmp_path):
    fetch_lapis(tmp_path / "raw", path=write_lapis_folder(tmp_path / "LAPIS"))
    stats = preprocess(tmp_path / "raw", tmp_path / "out", sd_size=8, rq_size=8, val_fraction=0.5, seed=0)
    ds = load_from_disk(str(tmp_path / "out"))
    rows = {r["image_id"]: r for split in ("train", "val") for r in ds[split]}
    assert {i: r["lapis_image_id"] for i, r in rows.items()} == {i: e["lapis_image_id"] for i, e in LAPIS_EXPECTED.items()}
    assert ds["train"].features["lapis_image_id"].dtype == "int64"
    assert {k: stats["fetch"][k] for k in LAPIS_LOSSES} == LAPIS_LOSSES
    assert stats["fetch"]["n_images"] == stats["n_in"] == 3
    # only machine-dependent figures sit under perf, and nothing machine-dependent sits outside it
    assert set(stats["perf"]) == {"seconds"} and "seconds" not in stats


def test_records_without_a_lapis_id_get_none(tmp_path):
    generate_synthetic(tmp_path / "raw", num_images=2, image_size=16, seed=0)
    stats = preprocess(tmp_path / "raw", tmp_path / "out", sd_size=8, rq_size=8, val_fraction=0.5, seed=0)
    ds = load_from_disk(str(tmp_path / "out"))
    assert [r["lapis_image_id"] for split in ("train", "val") for r in ds[split]] == [None, None]
    assert stats["fetch"] == {"images_lost_by_reason": {}, "n_images": 2, "n_in": 2}


def test_data_json_of_the_stages_shows_what_the_lapis_source_lost(tmp_path, monkeypatch):
    """fetch_data + preprocess as the pipeline runs them, on a LAPIS fixture: metrics/data.json counts the losses."""
    from squeezegen.stages import fetch_data
    from squeezegen.stages import preprocess as preprocess_stage

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["profile"] = "toy"
    params["data"]["lapis_path"] = str(write_lapis_folder(tmp_path / "LAPIS", excel=True, table_name="annotation/x"))
    params["profiles"]["toy"]["data"].update(source="lapis", sd_size=8, rq_size=8)
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo/params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path / "repo")
    monkeypatch.setenv("SQUEEZEGEN_MLFLOW", "0")
    fetch_data.main()
    preprocess_stage.main()
    metrics = json.loads(Path("metrics/data.json").read_text())
    fetch = metrics["fetch"]
    assert fetch["images_lost_by_reason"]["missing_image"] == 1  # one image, though it had 3 rating rows
    assert fetch["rating_rows_skipped_by_reason"]["missing_image"] == 3
    assert fetch["rating_rows_skipped_by_reason"]["blank_response"] == 1
    assert fetch["images_lost_by_reason"]["unrated_image"] == 1 and fetch["n_ignored_files"] == 3  # junk is no image
    assert fetch["n_in"] == 5 and metrics["n_in"] == metrics["n_kept"] == 3
    assert set(metrics["perf"]) == {"seconds"}
