"""The LAPIS ratings table is found by its columns, whatever its name; bad or ambiguous tables are named."""

from __future__ import annotations

import zipfile

import pandas as pd
import pytest
from data_fixtures import LAPIS_EXPECTED, LAPIS_LOSSES, lapis_table, write_lapis_folder, write_table

from squeezegen.data.lapis import fetch_lapis
from squeezegen.data.lapis_ratings import aggregate_ratings, missing_columns
from squeezegen.data.raw import is_junk, read_records
from squeezegen.errors import UserError


def _scores(raw) -> dict[str, float]:
    return {r["image_id"]: r["score"] for r in read_records(raw)}


EXPECTED_SCORES = {image_id: e["score"] for image_id, e in LAPIS_EXPECTED.items()}


@pytest.mark.parametrize("excel", [False, True], ids=["csv", "xlsx"])
@pytest.mark.parametrize("table_name", ["annotation/Dataset_individualratings_metadata", "ratings/all"])
def test_a_table_with_another_name_is_found_by_its_columns(tmp_path, table_name, excel):
    root = write_lapis_folder(tmp_path / "LAPIS", excel=excel, table_name=table_name)
    manifest = fetch_lapis(tmp_path / "raw", path=root)
    assert manifest["params"]["annotation"] == f"{table_name}.{'xlsx' if excel else 'csv'}"
    assert _scores(tmp_path / "raw") == EXPECTED_SCORES
    assert {k: manifest["counts"][k] for k in LAPIS_LOSSES} == LAPIS_LOSSES


def test_other_tables_and_a_format_twin_do_not_get_in_the_way(tmp_path):
    root = write_lapis_folder(tmp_path / "LAPIS", table_name="annotation/ratings")
    # the same table as .xlsx next to the .csv is one table; a table of other columns is not a candidate;
    # a ratings-shaped table outside annotation/ loses to the one inside it; macOS litter is not a table
    write_table(lapis_table(), root / "annotation/ratings.xlsx")
    write_table(pd.DataFrame({"participant_id": [1], "age": [30]}), root / "annotation/participants.csv")
    write_table(lapis_table().assign(response=1), root / "backup/old_ratings.csv")
    (root / "__MACOSX" / "annotation").mkdir(parents=True)
    (root / "__MACOSX/annotation/._ratings2.csv").write_text("file,response\nx.jpg,1\n")
    manifest = fetch_lapis(tmp_path / "raw", path=root)
    assert manifest["params"]["annotation"] == "annotation/ratings.csv"
    assert _scores(tmp_path / "raw") == EXPECTED_SCORES


def test_two_qualifying_tables_are_refused_and_both_named(tmp_path):
    root = write_lapis_folder(tmp_path / "LAPIS", table_name="annotation/ratings_2024")
    write_table(lapis_table(file_column="image_filename"), root / "annotation/ratings_2025.xlsx")
    with pytest.raises(UserError) as err:
        fetch_lapis(tmp_path / "raw", path=root)
    message = str(err.value)
    assert "annotation/ratings_2024.csv" in message and "annotation/ratings_2025.xlsx" in message
    assert "not found" not in message and not (tmp_path / "raw").exists()


@pytest.mark.parametrize("excel", [False, True], ids=["csv", "xlsx"])
def test_a_table_missing_response_names_the_column_and_the_file(tmp_path, excel):
    root = write_lapis_folder(tmp_path / "LAPIS", excel=excel)
    table = root / f"annotation/LAPIS_individualratings_metaANDdemodata.{'xlsx' if excel else 'csv'}"
    write_table(lapis_table().rename(columns={"response": "rating"}), table)
    with pytest.raises(UserError) as err:
        fetch_lapis(tmp_path / "raw", path=root)
    message = str(err.value)
    assert table.relative_to(root).as_posix() in message
    assert "no column response" in message and "not found at" not in message


def test_zip_without_any_table_still_says_how_to_get_lapis(tmp_path):
    with zipfile.ZipFile(tmp_path / "LAPIS.zip", "w") as zf:
        zf.writestr("LAPIS/images/a.jpg", b"x")
        zf.writestr("__MACOSX/LAPIS/._ratings.csv", b"file,response\n")
    with pytest.raises(UserError, match="no .csv or .xlsx") as err:
        fetch_lapis(tmp_path / "raw", path=tmp_path / "LAPIS.zip")
    assert "gated" in str(err.value)


def test_aggregate_counts_rows_and_keeps_the_lapis_id():
    table = pd.DataFrame({
        "File": ["a.jpg", "a.jpg", "a.jpg", None, "b.jpg", "gone.jpg", "gone.jpg", "c.jpg"],
        "Response ": [40, 60, " ", 50, -3, 10, "x", 80],
        "image_id": [7, 7, 8, 9, 11, 12, 12, 13.5],  # a's ids disagree once: the most common wins
    })
    assert missing_columns(table.columns) == []
    ratings = aggregate_ratings(table, {"a.jpg", "b.jpg", "c.jpg"})
    assert ratings.rows_skipped == {
        "blank_file": 1, "blank_response": 1, "non_numeric_response": 1, "response_out_of_range": 1,
        "missing_image": 1,
    }
    assert ratings.n_rows == 8 and ratings.named == {"a.jpg", "b.jpg", "gone.jpg", "c.jpg"}
    per_image = ratings.per_image
    assert list(per_image.index) == ["a.jpg", "c.jpg"]  # b's only rating is out of range
    assert per_image.loc["a.jpg", "score"] == 50.0 and per_image.loc["a.jpg", "lapis_image_id"] == 7
    assert pd.isna(per_image.loc["c.jpg", "lapis_image_id"])  # 13.5 is no LAPIS id


def test_missing_columns_lists_each_absent_requirement():
    assert missing_columns(["participant", "rating"]) == ["file or image_filename", "response"]
    assert missing_columns([" IMAGE_FILENAME", "Response"]) == []


def test_os_litter_is_junk():
    for name in ("images/Thumbs.db", "images/.DS_Store", "__MACOSX/images/a.jpg", "images/._a.jpg", "desktop.ini"):
        assert is_junk(name), name
    assert not is_junk("images/a.jpg") and not is_junk("annotation/ratings.csv")
