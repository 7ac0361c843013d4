"""Label lists: the packaged Kinetics-400 and SSv2 lists, custom files, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vstmon.errors import LabelsError
from vstmon.model import load_labels


def test_kinetics400_list_is_packaged() -> None:
    names = load_labels("kinetics400")
    assert len(names) == 400
    assert names[0] == "abseiling"
    assert names[-1] == "zumba"
    assert len(set(names)) == 400


def test_sthv2_list_is_packaged() -> None:
    names = load_labels("sthv2", num_classes=174)
    assert len(names) == 174
    assert names[0] == "Approaching something with your camera"
    assert names[-1] == "Wiping something off of something"


def test_custom_file_one_name_per_line(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("walking\nrunning  \r\nfalling down\n", encoding="utf-8")
    assert load_labels(path, num_classes=3) == ["walking", "running", "falling down"]
    assert load_labels(str(path)) == ["walking", "running", "falling down"]


def test_custom_file_keeps_non_ascii_names(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("café\nnaïve jump\n", encoding="utf-8")
    assert load_labels(path) == ["café", "naïve jump"]


def test_blank_line_is_reported_with_its_number(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("a\nb\n\nc\n", encoding="utf-8")
    with pytest.raises(LabelsError, match=r"line 3 is blank") as info:
        load_labels(path)
    assert str(path) in str(info.value)


def test_duplicate_is_reported_with_both_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("a\nb\nc\nb\n", encoding="utf-8")
    with pytest.raises(LabelsError, match=r"line 4: 'b' repeats line 2"):
        load_labels(path)


def test_count_mismatch_states_both_numbers() -> None:
    with pytest.raises(LabelsError) as info:
        load_labels("kinetics400", num_classes=174)
    message = str(info.value)
    assert "400" in message and "174" in message


def test_custom_file_count_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(LabelsError, match=r"has 2 names but the model's head has 10 classes"):
        load_labels(path, num_classes=10)


def test_unknown_name_that_is_no_file(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="not a packaged list"):
        load_labels(str(tmp_path / "kinetics700"))


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_bytes(b"ok\n\xff\xfe\x00broken\n")
    with pytest.raises(LabelsError, match="not UTF-8"):
        load_labels(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("", encoding="utf-8")
    with pytest.raises(LabelsError, match="no class names"):
        load_labels(path)
