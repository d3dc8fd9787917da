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
