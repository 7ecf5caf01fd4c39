"""Files lbw writes for the user to edit: replaced while unedited, kept once edited (unless forced)."""

from __future__ import annotations

import hashlib

import pytest

from lbw.errors import OutputError
from lbw.files.generated import STAMP, check_overwrite, is_unedited, stamped, write_generated


def test_unedited_files_are_replaced_edited_ones_kept(tmp_path):
    path = tmp_path / "suggested-sheet.toml"
    write_generated(path, "a = 1\n")
    digest = hashlib.sha256(b"a = 1\n").hexdigest()
    assert path.read_text() == stamped("a = 1\n") == f"{STAMP}{digest}\na = 1\n"
    assert is_unedited(path)
    write_generated(path, "a = 2\n")
    assert path.read_text().endswith("a = 2\n") and is_unedited(path)
    path.write_text(path.read_text().replace("a = 2", "a = 3"))
    assert not is_unedited(path)
    with pytest.raises(OutputError, match="edited since lbw wrote it"):
        write_generated(path, "a = 4\n")
    assert path.read_text().endswith("a = 3\n")
    write_generated(path, "a = 4\n", force=True)
    assert path.read_text().endswith("a = 4\n")


def test_files_lbw_did_not_write_are_kept(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text("name = 'hand made'\n")
    with pytest.raises(OutputError, match="or not written by lbw"):
        check_overwrite(mine)
    stamp_only = tmp_path / "stamp.toml"
    stamp_only.write_text(f"{STAMP}{'0' * 64}\nx = 1\n")  # a stamp whose hash does not match
    assert not is_unedited(stamp_only)
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(OutputError, match="is a folder"):
        check_overwrite(tmp_path / "dir.toml")
    check_overwrite(tmp_path / "absent.toml")  # nothing there: fine
    dangling = tmp_path / "dangling.toml"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(OutputError):
        check_overwrite(dangling)
