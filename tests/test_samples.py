"""The checked-in dirty samples are exactly what ``write_samples`` writes."""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest

from bulkmail_kernel.demo.samples import SAMPLE_FILES, write_samples

SAMPLES = Path(__file__).resolve().parents[1] / "data" / "samples"


def test_write_samples_returns_every_file(tmp_path: Path) -> None:
    paths = write_samples(tmp_path / "new")
    assert [p.name for p in paths] == list(SAMPLE_FILES)
    assert all(p.stat().st_size > 0 for p in paths)


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_committed_sample_is_current(tmp_path: Path, name: str) -> None:
    """Regenerate with write_samples(Path('data/samples')) if this fails after a change."""
    write_samples(tmp_path)
    assert (tmp_path / name).read_bytes() == (SAMPLES / name).read_bytes()


def test_xlsx_cell_values_match(tmp_path: Path) -> None:
    # Byte equality above already holds; this says what differs if it ever does not.
    write_samples(tmp_path)

    def cells(path: Path) -> list[tuple[object, ...]]:
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            return list(wb.worksheets[0].iter_rows(values_only=True))
        finally:
            wb.close()

    got = cells(tmp_path / "patients.xlsx")
    assert got == cells(SAMPLES / "patients.xlsx")
    assert got[0][:3] == ("id", "first_name", "last_name")
    assert got[3][1] == "=cmd|' /C calc'!A0"  # stored as text, not as a formula


def test_writing_twice_is_identical(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in write_samples(tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in write_samples(tmp_path / "b")}
    assert first == second


def test_readme_describes_every_sample() -> None:
    readme = (SAMPLES / "README.md").read_text(encoding="utf-8")
    for name in SAMPLE_FILES:
        assert f"`{name}`" in readme


def test_encodings_are_the_advertised_ones() -> None:
    raw = (SAMPLES / "clients_cp1250.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    assert "Šťastná" in raw.decode("cp1250")
    assert "Отчество" in (SAMPLES / "klienty_cp1251.csv").read_bytes().decode("cp1251")
