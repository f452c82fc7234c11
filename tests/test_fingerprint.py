"""Cache keys follow content: a corpus copied afresh keeps its caches; changed bytes get new ones."""

import os

from saexplain.data.contexts import CorpusConfig
from saexplain.fingerprint import FULL_HASH_BYTES, path_fingerprint


def test_copy_with_new_mtime_keeps_the_key_and_new_bytes_change_it(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    (a / "one.txt").write_text("once upon a time\n")
    (a / "two.txt").write_text("there was a river\n")
    before = CorpusConfig(corpus=[str(a)]).fingerprint()
    # the same files written again (as a corpus folder copied afresh): new mtimes, same bytes
    for f in a.iterdir():
        data = f.read_bytes()
        f.unlink()
        f.write_bytes(data)
        os.utime(f, (1, 1))
    assert CorpusConfig(corpus=[str(a)]).fingerprint() == before
    b = a
    (b / "two.txt").write_text("there was a rivers\n")
    assert CorpusConfig(corpus=[str(b)]).fingerprint() != before
    # renaming a file inside the folder is a change too
    (b / "two.txt").write_text("there was a river\n")
    assert CorpusConfig(corpus=[str(b)]).fingerprint() == before
    (b / "two.txt").rename(b / "three.txt")
    assert CorpusConfig(corpus=[str(b)]).fingerprint() != before


def test_large_file_sampled_still_sees_a_change_in_its_middle(tmp_path):
    f = tmp_path / "w.bin"
    data = bytearray(FULL_HASH_BYTES + (4 << 20))
    f.write_bytes(data)
    before = path_fingerprint(str(f))
    data[len(data) // 2] = 1
    f.write_bytes(data)
    assert path_fingerprint(str(f)) != before


def test_non_paths_fingerprint_as_themselves():
    assert path_fingerprint("google/gemma-3-270m") == "google/gemma-3-270m"
