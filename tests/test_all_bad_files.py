"""A data folder in which no file is usable: the error lists each file and why, as the skip summary does."""

from __future__ import annotations

import pytest

from aldar_lit.data.dataset import DataError, scan_folder
from test_bad_input import BAD_FILES, write


def test_a_folder_of_only_bad_files_names_each_file_and_its_reason(tmp_path) -> None:
    for name, (data, caption, _) in BAD_FILES.items():
        write(tmp_path, name, data, caption)
    with pytest.raises(DataError) as caught:
        scan_folder(tmp_path, "aldar_kose_man", on_bad_file="skip", min_side=64)
    message = str(caught.value)
    assert message.startswith("data.root: no usable images")
    assert f"all {len(BAD_FILES)} image files are bad" in message
    lines = message.splitlines()[1:]
    assert len(lines) == len(BAD_FILES)
    for name, (_, _, reason) in BAD_FILES.items():  # the image, or its caption file for a bad caption
        [line] = [line for line in lines if line.startswith(f"  {(tmp_path / name).with_suffix('')}.")]
        assert reason in line
