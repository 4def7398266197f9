"""Captions, the synthetic art set, and the LAPIS and folder sources (raw layout)."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import LAPIS_EXPECTED, LAPIS_LOSSES, write_lapis_folder
from PIL import Image

from squeezegen.data.captions import GENRES, STYLES, all_captions, caption_for
from squeezegen.data.folder import fetch_folder
from squeezegen.data.lapis import fetch_lapis
from squeezegen.data.raw import read_records
from squeezegen.data.synthetic import contact_sheet, generate_synthetic, render_painting
from squeezegen.data.synthetic_quality import Quality
from squeezegen.errors import UserError
from squeezegen.files import sha256_file

PASSWORD = "Zq-9d7!secretLAPISpw"


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------ captions


def test_caption_adjectives_articles_and_genre_nouns():
    assert caption_for("Post_Impressionism", "landscape") == "a post-impressionist landscape painting"
    assert caption_for("Abstract_Expressionism", "portrait") == "an abstract expressionist portrait painting"
    assert caption_for("Fauvism", "flower painting") == "a fauvist flower painting"
    assert caption_for("Ukiyo_e", "still life") == "an ukiyo-e still life painting"
    assert caption_for("Impressionism", "nude painting") == "an impressionist nude painting"
    # names are matched loosely; unknown names are kept as given; missing parts are left out
    assert caption_for("post impressionism", "Landscape") == caption_for("Post-Impressionism", "landscape")
    assert caption_for("Surrealism", "seascape") == "a surrealism seascape painting"
    assert caption_for(None, "portrait") == "a portrait painting"
    assert caption_for("Baroque", None) == "a baroque painting"


def test_all_captions_cover_every_pair_once_in_fixed_order():
    captions = all_captions()
    assert len(STYLES) == 26 and len(set(STYLES)) == 26 and "Action_painting" not in STYLES
    assert len(GENRES) == 7
    assert len(captions) == len(STYLES) * len(GENRES) == len(set(captions))
    assert captions[0] == caption_for(STYLES[0], GENRES[0]) and captions[-1] == caption_for(STYLES[-1], GENRES[-1])
    for caption in captions:
        article, rest = caption.split(" ", 1)
        assert article == ("an" if rest[0] in "aeiou" else "a"), caption
        assert "painting painting" not in caption and "_" not in caption and caption.endswith("painting")
    assert all_captions() == captions


# ----------------------------------------------------------------------------------- synthetic


def test_synthetic_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = generate_synthetic(tmp_path / "a", num_images=5, image_size=32, seed=3)
    b = generate_synthetic(tmp_path / "b", num_images=5, image_size=32, seed=3)
    c = generate_synthetic(tmp_path / "c", num_images=5, image_size=32, seed=4)
    assert _all_bytes(tmp_path / "a") == _all_bytes(tmp_path / "b")
    assert a == b
    images_a = {k: v for k, v in a["sha256"].items() if k.startswith("images/")}
    images_c = {k: v for k, v in c["sha256"].items() if k.startswith("images/")}
    assert images_a.keys() == images_c.keys()
    assert all(images_a[k] != images_c[k] for k in images_a)
    # growing the set leaves the first images untouched
    generate_synthetic(tmp_path / "d", num_images=7, image_size=32, seed=3)
    for name, digest in images_a.items():
        assert sha256_file(tmp_path / "d" / name) == digest


def test_synthetic_raw_layout_records_and_manifest(tmp_path):
    manifest = generate_synthetic(tmp_path / "raw", num_images=9, image_size=24, seed=0)
    records = read_records(tmp_path / "raw")
    assert len(records) == 9 == manifest["counts"]["n_images"]
    assert len({r["image_id"] for r in records}) == 9
    assert manifest["source"] == "synthetic" and manifest["params"] == {"num_images": 9, "image_size": 24, "seed": 0}
    for r in records:
        assert r["style"] in STYLES and r["genre"] in GENRES and r["caption"] is None
        assert 0 <= r["score"] <= 100 and 20 <= r["n_ratings"] <= 28
        assert r["file"] == f"images/{r['image_id']}.png"
        with Image.open(tmp_path / "raw" / r["file"]) as im:
            assert im.size == (24, 24) and im.mode == "RGB"
        assert manifest["sha256"][r["file"]] == sha256_file(tmp_path / "raw" / r["file"])
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # written atomically, nothing left over


def _neighbour_correlation(image: np.ndarray) -> float:
    lum = image.astype(np.float64).mean(axis=-1)
    return float(np.corrcoef(lum[:, 1:].ravel(), lum[:, :-1].ravel())[0, 1])


def test_synthetic_images_are_smooth_not_noise():
    tidy = Quality(clutter=-1.0)  # the brushwork's own smoothness, without the stray marks of clutter
    correlations = [
        _neighbour_correlation(render_painting(style, GENRES[i % 7], 48, np.random.default_rng([11, i]), quality=tidy))
        for i, style in enumerate(STYLES)
    ]
    noise = np.random.default_rng(0).integers(0, 256, (48, 48, 3))
    assert abs(_neighbour_correlation(noise)) < 0.2
    assert np.median(correlations) > 0.85 and min(correlations) > 0.5


def test_synthetic_style_changes_colour_statistics():
    def stats(style):
        images = [
            render_painting(style, genre, 48, np.random.default_rng([12, k])) / 255.0 for k, genre in enumerate(GENRES[:4])
        ]
        lum = np.mean([im.mean() for im in images])
        sat = np.mean([(im.max(-1) - im.min(-1)).mean() for im in images])
        return lum, sat

    baroque, impressionism = stats("Baroque"), stats("Impressionism")
    analytical, fauvism, pop = stats("Analytical_Cubism"), stats("Fauvism"), stats("Pop_Art")
    assert baroque[0] < impressionism[0] - 0.15  # dark chiaroscuro vs light, airy palette
    assert analytical[1] * 2 < min(fauvism[1], pop[1])  # near-monochrome vs saturated


def test_synthetic_genre_changes_composition():
    """Within one style, the coarse layout tells the genre apart (leave-one-out nearest centroid)."""
    feats, labels = [], []
    for g, genre in enumerate(GENRES):
        for k in range(4):
            image = render_painting("Realism", genre, 48, np.random.default_rng([13, g, k]))
            thumb = np.asarray(Image.fromarray(image).convert("L").resize((8, 8), Image.Resampling.BOX), np.float64).ravel()
            feats.append(thumb - thumb.mean())
            labels.append(g)
    feats, labels = np.array(feats), np.array(labels)
    hits = 0
    for i in range(len(feats)):
        others = np.arange(len(feats)) != i
        centroids = np.array([feats[others & (labels == g)].mean(0) for g in range(len(GENRES))])
        hits += int(np.argmin(((centroids - feats[i]) ** 2).sum(1)) == labels[i])
    assert hits / len(feats) > 3 / len(GENRES)  # chance is 1/7


def test_contact_sheet_grid():
    tiles = [np.full((10, 12, 3), 40 * i, np.uint8) for i in range(5)]
    sheet = contact_sheet(tiles, 2, pad=1)
    assert sheet.size == (2 * 13 + 1, 3 * 11 + 1)
    assert sheet.getpixel((1 + 13, 1 + 11)) == (120, 120, 120)  # tile 3 sits at row 1, column 1


# --------------------------------------------------------------------------------------- LAPIS


def _fetch(out: Path, path: Path, **kwargs) -> Path:
    fetch_lapis(out, path=path, **kwargs)
    return out


def _check_lapis_raw(raw: Path) -> dict:
    records = {r["image_id"]: r for r in read_records(raw)}
    assert set(records) == set(LAPIS_EXPECTED)
    for image_id, expected in LAPIS_EXPECTED.items():
        r = records[image_id]
        assert r["score"] == pytest.approx(expected["score"])
        assert (r["n_ratings"], r["style"], r["genre"]) == (expected["n_ratings"], expected["style"], expected["genre"])
        assert r["lapis_image_id"] == expected["lapis_image_id"]
        assert (raw / r["file"]).is_file()
    manifest = json.loads((raw / "manifest.json").read_text())
    # images and rating rows lost on the way, by reason (junk files in images/ are not "unrated images")
    assert {k: manifest["counts"][k] for k in LAPIS_LOSSES} == LAPIS_LOSSES
    assert manifest["counts"]["n_images"] == len(LAPIS_EXPECTED)
    return manifest


@pytest.mark.parametrize("file_column,excel", [("file", False), ("image_filename", False), ("file", True)])
def test_lapis_folder_aggregates_ratings_per_image(tmp_path, file_column, excel):
    root = write_lapis_folder(tmp_path / "LAPIS", file_column=file_column, excel=excel)
    manifest = _check_lapis_raw(_fetch(tmp_path / "raw", root))
    assert manifest["source"] == "lapis"
    # images are copied byte for byte
    assert (tmp_path / "raw/images/monet_b.jpg").read_bytes() == (root / "images/monet_b.jpg").read_bytes()


def test_lapis_plain_zip_and_max_images(tmp_path):
    root = write_lapis_folder(tmp_path / "LAPIS")
    with zipfile.ZipFile(tmp_path / "LAPIS.zip", "w") as zf:
        for p in sorted(root.rglob("*")):
            zf.write(p, p.relative_to(tmp_path).as_posix())
    _check_lapis_raw(_fetch(tmp_path / "raw", tmp_path / "LAPIS.zip"))
    counts = fetch_lapis(tmp_path / "raw2", path=tmp_path / "LAPIS.zip", max_images=2)["counts"]
    assert len(read_records(tmp_path / "raw2")) == 2 == counts["n_images"]
    assert counts["images_lost_by_reason"]["over_max_images"] == 1
    # every image and every rating row is accounted for
    assert counts["n_in"] == counts["n_images"] + sum(counts["images_lost_by_reason"].values())
    assert counts["n_rating_rows"] == counts["n_ratings"] + sum(counts["rating_rows_skipped_by_reason"].values())
    assert counts["rating_rows_skipped_by_reason"]["over_max_images"] == 9 - counts["n_ratings"] > 0


@pytest.mark.skipif(shutil.which("zip") is None, reason="the zip CLI is needed to write a password-protected zip")
def test_lapis_encrypted_zip_needs_right_password_and_never_leaks_it(tmp_path, monkeypatch):
    write_lapis_folder(tmp_path / "LAPIS")
    subprocess.run(["zip", "-q", "-r", "-P", PASSWORD, "LAPIS.zip", "LAPIS"], cwd=tmp_path, check=True)
    archive = tmp_path / "LAPIS.zip"

    monkeypatch.delenv("LAPIS_PASSWORD", raising=False)
    with pytest.raises(UserError, match="LAPIS_PASSWORD") as no_password:
        fetch_lapis(tmp_path / "raw", path=archive)
    monkeypatch.setenv("LAPIS_PASSWORD", PASSWORD + "-wrong")
    with pytest.raises(UserError, match="password") as wrong:
        fetch_lapis(tmp_path / "raw", path=archive)
    assert PASSWORD not in str(wrong.value) and PASSWORD not in str(no_password.value)
    assert not (tmp_path / "raw").exists()

    monkeypatch.setenv("LAPIS_PASSWORD", PASSWORD)
    manifest = _check_lapis_raw(_fetch(tmp_path / "raw", archive))
    assert manifest["params"]["password_env"] == "LAPIS_PASSWORD"
    for path in (tmp_path / "raw").rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path


def test_lapis_aes_zip_asks_to_unzip_manually(tmp_path):
    root = write_lapis_folder(tmp_path / "LAPIS")
    with zipfile.ZipFile(tmp_path / "LAPIS.zip", "w") as zf:
        zf.write(root / "images" / "monet_b.jpg", "LAPIS/images/monet_b.jpg")
    data = bytearray((tmp_path / "LAPIS.zip").read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 10 : central + 12] = (99).to_bytes(2, "little")  # compression method 99 = WinZip AES
    (tmp_path / "LAPIS.zip").write_bytes(bytes(data))
    with pytest.raises(UserError, match="AES.*unzip|unzip.*AES"):
        fetch_lapis(tmp_path / "raw", path=tmp_path / "LAPIS.zip")


def test_lapis_missing_path_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LAPIS_PASSWORD", PASSWORD)
    with pytest.raises(UserError) as err:
        fetch_lapis(tmp_path / "raw", path=tmp_path / "data" / "LAPIS.zip")
    message = str(err.value)
    for needed in ("gated", "access", "2504.07670", "data.lapis_path", "data/LAPIS.zip", "LAPIS_PASSWORD"):
        assert needed in message
    assert PASSWORD not in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="annotation"):
        fetch_lapis(tmp_path / "raw", path=tmp_path / "empty")


# -------------------------------------------------------------------------------------- folder


def test_folder_source_copies_every_file_with_metadata(tmp_path):
    src = tmp_path / "art"
    (src / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(src / "a.png")
    Image.new("RGB", (8, 8), (10, 200, 10)).save(src / "sub" / "b.jpg")
    (src / "sub" / "readme.txt").write_text("not an image, preprocess decides")
    (src / ".hidden.png").write_bytes(b"x")
    (src / "sub" / "Thumbs.db").write_bytes(b"x")
    (src / "metadata.csv").write_text(
        "file_name,caption,style,genre,score\n"
        "a.png,a red square,Suprematism,abstract,71.5\n"
        "sub/b.jpg,,Impressionism,landscape,not-a-number\n"
        "gone.png,,,,\n"
    )
    manifest = fetch_folder(tmp_path / "raw", path=src)
    records = {r["image_id"]: r for r in read_records(tmp_path / "raw")}
    assert set(records) == {"a", "sub__b", "sub__readme"}
    assert records["a"]["caption"] == "a red square" and records["a"]["style"] == "Suprematism"
    assert records["a"]["score"] == 71.5
    assert records["sub__b"]["score"] is None and records["sub__b"]["genre"] == "landscape"
    assert records["sub__readme"]["style"] is None
    assert (tmp_path / "raw" / records["sub__b"]["file"]).read_bytes() == (src / "sub" / "b.jpg").read_bytes()
    counts = manifest["counts"]
    assert counts["images_lost_by_reason"] == {"missing_image": 1, "over_max_images": 0}
    assert (counts["n_in"], counts["n_images"], counts["n_ignored_files"]) == (4, 3, 2)  # gone.png; .hidden, Thumbs.db
    assert manifest["counts"]["n_invalid_numbers"] == 1


def test_folder_source_errors(tmp_path):
    with pytest.raises(UserError, match="data.folder_path"):
        fetch_folder(tmp_path / "raw", path=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no files"):
        fetch_folder(tmp_path / "raw", path=tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"x")
    (tmp_path / "bad" / "metadata.csv").write_text("name,caption\nx.png,hi\n")
    with pytest.raises(UserError, match="file_name"):
        fetch_folder(tmp_path / "raw", path=tmp_path / "bad")
