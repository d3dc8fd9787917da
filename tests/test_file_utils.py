import os
import stat
import subprocess
import sys

import pytest

from slim_diffusers.utils.file_utils import write_atomically

# every kind of file the package writes, under several umasks, in a child process: the umask is process-wide,
# so the test's own process keeps its own
WRITE_EVERY_KIND = r"""
import os, sys
import PIL.Image, torch
from slim_diffusers import SLIMBitstream
from slim_diffusers.coding.bit_allocation import draw_bit_allocation
from slim_diffusers.utils.file_utils import write_atomically
image = PIL.Image.new("RGB", (8, 8))
for umask in sys.argv[2:]:
    out = os.path.join(sys.argv[1], umask)
    os.mkdir(out)
    os.umask(int(umask, 8))
    SLIMBitstream(8, 8, b"abcd", "x", bytes(8)).save(os.path.join(out, "a.slim"))
    write_atomically(os.path.join(out, "a.png"), lambda f: image.save(f, format="PNG"))
    draw_bit_allocation(image, torch.ones(2, 2), os.path.join(out, "a_bits.png"), stride=4)
    open(os.path.join(out, "plain"), "wb").close()  # what a plain open() gives, for comparison
"""
UMASK_MODES = {"022": 0o644, "077": 0o600, "002": 0o664}


def test_written_files_get_the_mode_open_gives(tmp_path):
    subprocess.run([sys.executable, "-c", WRITE_EVERY_KIND, str(tmp_path), *UMASK_MODES], check=True, timeout=300)
    for umask, mode in UMASK_MODES.items():
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / umask).iterdir()}
        assert modes == {"a.slim": mode, "a.png": mode, "a_bits.png": mode, "plain": mode}, (umask, modes)


def test_replacing_a_file_keeps_its_mode_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "x.slim"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)
    write_atomically(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["x.slim"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomically(path, fail)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.png"]


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_directory_swaps_in_the_new_folder_whole(tmp_path, monkeypatch, exchange):
    from slim_diffusers.utils import file_utils

    if not exchange:  # a system without renameat2(RENAME_EXCHANGE): the old folder is moved aside first
        monkeypatch.setattr(file_utils, "_exchange", lambda a, b: False)
    old, new = tmp_path / "data", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "a").write_text("old"), (old / "only-old").write_text("x"), (new / "a").write_text("new")
    file_utils.replace_directory(new, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert sorted(p.name for p in old.iterdir()) == ["a"] and (old / "a").read_text() == "new"
    file_utils.replace_directory(_folder(tmp_path / "fresh"), tmp_path / "created")  # nothing there before
    assert (tmp_path / "created").is_dir() and not (tmp_path / "fresh").exists()


def _folder(path):
    path.mkdir()
    return path


def test_a_staged_folder_appears_whole_and_sweeps_only_its_own_leftovers(tmp_path):
    from slim_diffusers.utils.file_utils import staged_directory

    other = tmp_path / ".other.slim-staging-1234abcd"  # another folder's save in progress: not touched
    mine = tmp_path / ".out.slim-staging-deadbeef"  # a killed save of this folder: swept
    other.mkdir(), mine.mkdir()
    with staged_directory(tmp_path / "out") as stage:
        (stage / "model_index.json").write_text("{}")
        (stage / "part").mkdir()
        assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model_index.json", "part"]
    assert other.exists() and not mine.exists()

    (tmp_path / "out" / "checkpoint-1").mkdir()  # what else the folder holds stays
    with pytest.raises(RuntimeError):
        with staged_directory(tmp_path / "out") as stage:
            (stage / "model_index.json").write_text('{"new": 1}')
            raise RuntimeError("failed half way")
    assert (tmp_path / "out" / "model_index.json").read_text() == "{}"  # a failed save changes nothing
    with staged_directory(tmp_path / "out") as stage:
        (stage / "model_index.json").write_text('{"new": 1}')
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-1", "model_index.json", "part"]
    assert (tmp_path / "out" / "model_index.json").read_text() == '{"new": 1}'
