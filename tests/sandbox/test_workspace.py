"""sandbox/workspace.py: nothing outside the root is ever read or written, whatever the workspace
or an archive holds (`..`, absolute paths, symlinks, hard links, FIFOs, bombs)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from support.streams import Zeros

from autopilotd.sandbox.workspace import (
    Caps,
    FileInfo,
    WorkspaceError,
    clean_path,
    extract_archive,
    read_file,
    scan,
    usage,
    write_file,
)

MiB = 1 << 20


@pytest.fixture
def root(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return workspace


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the workspace, with a secret in it."""
    place = tmp_path / "outside"
    place.mkdir()
    (place / "secret.txt").write_bytes(b"SECRET")
    return place


def tree(path: Path) -> list[tuple[str, str, bytes | None]]:
    """Everything under path: (relative path, kind, content of a regular file)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            mode = full.lstat().st_mode
            kind = "link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode) else "other"
            content = full.read_bytes() if stat.S_ISREG(mode) else None
            found.append((str(full.relative_to(path)), kind, content))
    return sorted(found)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tar_of(*members: tarfile.TarInfo | tuple[str, bytes], mode: str = "w:gz") -> bytes:
    """A tar of (name, data) files and bare TarInfo headers (links, dirs, devices, ...)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as archive:  # type: ignore[call-overload]
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def header(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def zip_of(*members: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buf.getvalue()


# --- clean_path ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "empty path"),
        ("/etc/passwd", "absolute"),
        ("..", "'..'"),
        ("a/../b", "'..'"),
        ("../etc", "'..'"),
        ("a/..", "'..'"),
        ("a\0b", "NUL"),
        ("a\\b", "backslash"),
        ("..\\evil", "backslash"),
        ("a//b", "empty path component"),
        ("a/", "empty path component"),
        ("./a", "'.'"),
        ("a/./b", "'.'"),
        ("/".join("d" * 17), "deeper than 16"),
        ("x" * 256, "component longer than 255"),
        ("/".join(["y" * 255] * 4) + "/z", "longer than 1020"),
        ("bad\udcffname", "UTF-8"),
    ],
)
def test_clean_path_refuses(path: str, why: str) -> None:
    with pytest.raises(WorkspaceError, match=why):
        clean_path(path)


def test_clean_path_accepts_and_splits() -> None:
    assert clean_path("a") == ("a",)
    assert clean_path("out/result.txt") == ("out", "result.txt")
    assert clean_path(".hidden/..x/x..") == (".hidden", "..x", "x..")
    assert clean_path("é/" + "x" * 255) == ("é", "x" * 255)
    assert len(clean_path("/".join("d" * 16))) == 16
    assert clean_path("a/b", Caps(max_depth=2)) == ("a", "b")
    with pytest.raises(WorkspaceError):
        clean_path("a/b/c", Caps(max_depth=2))
    with pytest.raises(WorkspaceError):
        clean_path("abcdef", Caps(max_path_bytes=5))


# --- write_file and read_file -------------------------------------------------------------------


def test_write_then_read_round_trip(root: Path) -> None:
    info = write_file(root, "result.txt", b"hello")
    assert info == FileInfo("result.txt", 5, sha(b"hello"))
    assert read_file(root, "result.txt", 100) == b"hello"
    assert stat.S_IMODE((root / "result.txt").stat().st_mode) == 0o644


def test_write_makes_nested_directories(root: Path) -> None:
    info = write_file(root, "a/b/c/d.bin", b"\x00\x01")
    assert info.path == "a/b/c/d.bin"
    assert (root / "a/b/c/d.bin").read_bytes() == b"\x00\x01"
    assert stat.S_IMODE((root / "a/b").stat().st_mode) == 0o755
    assert read_file(root, "a/b/c/d.bin", 2) == b"\x00\x01"


def test_write_replaces_a_file_and_leaves_no_temporary(root: Path) -> None:
    write_file(root, "f", b"old contents")
    write_file(root, "f", b"new")
    assert read_file(root, "f", 100) == b"new"
    assert [entry.name for entry in root.iterdir()] == ["f"]


def test_write_through_a_symlinked_directory_is_refused(root: Path, outside: Path) -> None:
    (root / "link").symlink_to(outside)
    for path in ("link/x.txt", "link/sub/x.txt", "link/secret.txt"):
        with pytest.raises(WorkspaceError, match="not a directory: link"):
            write_file(root, path, b"pwned")
    assert tree(outside) == [("secret.txt", "other", b"SECRET")]
    assert tree(root) == [("link", "link", None)]


def test_write_onto_a_symlink_is_refused(root: Path, outside: Path) -> None:
    (root / "f").symlink_to(outside / "secret.txt")
    with pytest.raises(WorkspaceError, match="not a regular file: f"):
        write_file(root, "f", b"pwned")
    assert (outside / "secret.txt").read_bytes() == b"SECRET"
    assert (root / "f").is_symlink()


def test_write_onto_a_directory_or_fifo_is_refused(root: Path) -> None:
    (root / "d").mkdir()
    os.mkfifo(root / "p")
    for path in ("d", "p"):
        with pytest.raises(WorkspaceError, match="not a regular file"):
            write_file(root, path, b"x")
    with pytest.raises(WorkspaceError, match="not a directory: p"):
        write_file(root, "p/x", b"x")


def test_write_never_writes_through_a_hard_link(root: Path, outside: Path) -> None:
    os.link(outside / "secret.txt", root / "h")
    write_file(root, "h", b"replaced")
    assert (outside / "secret.txt").read_bytes() == b"SECRET"
    assert read_file(root, "h", 100) == b"replaced"


def test_dot_dot_escapes_are_refused(root: Path, outside: Path) -> None:
    (root / "a").mkdir()
    for path in ("../outside/secret.txt", "a/../../outside/secret.txt", "/etc/passwd"):
        with pytest.raises(WorkspaceError):
            read_file(root, path, 100)
    for path in ("../outside/evil", "a/../../outside/evil", "a/../../../evil", "/tmp/evil"):
        with pytest.raises(WorkspaceError):
            write_file(root, path, b"pwned")
    assert tree(outside) == [("secret.txt", "other", b"SECRET")]
    assert tree(root) == [("a", "dir", None)]


def test_read_of_a_symlink_to_outside_is_refused(root: Path, outside: Path) -> None:
    (root / "f").symlink_to(outside / "secret.txt")
    (root / "d").symlink_to(outside)
    with pytest.raises(WorkspaceError, match="not a regular file: f") as caught:
        read_file(root, "f", 100)
    assert "SECRET" not in str(caught.value)
    with pytest.raises(WorkspaceError, match="not a directory: d"):
        read_file(root, "d/secret.txt", 100)


def test_read_of_a_symlink_inside_the_root_is_refused_too(root: Path) -> None:
    (root / "real.txt").write_bytes(b"inside")
    (root / "alias.txt").symlink_to("real.txt")
    (root / "dir").mkdir()
    (root / "dir/x").write_bytes(b"x")
    (root / "dirlink").symlink_to("dir")
    with pytest.raises(WorkspaceError, match="not a regular file"):
        read_file(root, "alias.txt", 100)
    with pytest.raises(WorkspaceError, match="not a directory"):
        read_file(root, "dirlink/x", 100)


@pytest.mark.timeout(10)
def test_read_of_a_fifo_is_refused_without_blocking(root: Path) -> None:
    os.mkfifo(root / "pipe")
    with pytest.raises(WorkspaceError, match="not a regular file: pipe"):
        read_file(root, "pipe", 100)


def test_read_of_a_directory_or_missing_file_is_refused(root: Path) -> None:
    (root / "d").mkdir()
    with pytest.raises(WorkspaceError, match="not a regular file: d"):
        read_file(root, "d", 100)
    with pytest.raises(WorkspaceError, match="no such file: nope"):
        read_file(root, "nope", 100)
    with pytest.raises(WorkspaceError, match="no such file: no/such/dir"):
        read_file(root, "no/such/dir", 100)


def test_read_over_max_bytes_is_refused(root: Path) -> None:
    write_file(root, "big", b"x" * 1000)
    with pytest.raises(WorkspaceError, match="big is 1000 bytes, over the cap of 999"):
        read_file(root, "big", 999)
    assert read_file(root, "big", 1000) == b"x" * 1000


def test_write_caps_one_file(root: Path) -> None:
    with pytest.raises(WorkspaceError, match="over the cap of 10"):
        write_file(root, "f", b"x" * 11, Caps(max_file_bytes=10))
    assert tree(root) == []


def test_write_caps_count_what_the_workspace_already_holds(root: Path) -> None:
    caps = Caps(max_total_bytes=1000)
    write_file(root, "existing", b"x" * 600, caps)
    with pytest.raises(WorkspaceError, match="cap of 1000 bytes"):
        write_file(root, "sub/more", b"y" * 500, caps)
    assert tree(root) == [("existing", "other", b"x" * 600)]  # and "sub" was removed
    write_file(root, "existing", b"z" * 900, caps)  # replacing: the old size is not counted
    write_file(root, "small", b"w" * 100, caps)
    assert usage(root) == (1000, 2)


def test_write_caps_entries_and_removes_directories_it_made(root: Path) -> None:
    caps = Caps(max_files=3)
    write_file(root, "a/b/c.txt", b"1", caps)  # a, a/b, a/b/c.txt
    write_file(root, "a/b/c.txt", b"2", caps)  # replacing adds no entry
    with pytest.raises(WorkspaceError, match="cap of 3 entries"):
        write_file(root, "x/y.txt", b"3", caps)
    assert [path for path, _, _ in tree(root)] == ["a", "a/b", "a/b/c.txt"]


def test_a_missing_workspace_is_refused(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="does not exist"):
        write_file(tmp_path / "nope", "f", b"x")
    with pytest.raises(WorkspaceError, match="does not exist"):
        read_file(tmp_path / "nope", "f", 10)
    assert not (tmp_path / "nope").exists()


# --- archives: refused before anything is written -----------------------------------------------


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../evil", "'..'"),
        ("a/../../evil", "'..'"),
        ("/etc/evil", "absolute"),
        ("/tmp/evil", "absolute"),
        ("a\\..\\evil", "backslash"),
    ],
)
def test_tar_with_an_escaping_member_is_refused(
    root: Path, outside: Path, member: str, why: str
) -> None:
    data = tar_of(("good.txt", b"fine"), (member, b"pwned"))
    with pytest.raises(WorkspaceError, match=why):
        extract_archive(root, data)
    assert tree(root) == []
    assert tree(outside) == [("secret.txt", "other", b"SECRET")]


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (header("link", tarfile.SYMTYPE, "/etc/passwd"), "symlink refused"),
        (header("link", tarfile.SYMTYPE, "inside.txt"), "symlink refused"),
        (header("hard", tarfile.LNKTYPE, "good.txt"), "hard link refused"),
        (header("hard", tarfile.LNKTYPE, "/etc/passwd"), "hard link refused"),
        (header("dev", tarfile.CHRTYPE), "device refused"),
        (header("dev", tarfile.BLKTYPE), "device refused"),
        (header("pipe", tarfile.FIFOTYPE), "fifo refused"),
    ],
)
def test_tar_with_a_link_or_special_member_is_refused(
    root: Path, member: tarfile.TarInfo, why: str
) -> None:
    data = tar_of(("good.txt", b"fine"), member, ("after.txt", b"more"))
    with pytest.raises(WorkspaceError, match=why):
        extract_archive(root, data)
    assert tree(root) == []


def test_zip_with_an_escaping_member_is_refused(root: Path, outside: Path) -> None:
    for member in ("../evil", "a/../../evil", "/evil", "..\\evil"):
        with pytest.raises(WorkspaceError, match="archive member"):
            extract_archive(root, zip_of(("good.txt", b"fine"), (member, b"pwned")))
    assert tree(root) == []
    assert not (outside.parent / "evil").exists()


def test_zip_with_a_symlink_member_is_refused(root: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("good.txt", b"fine")
        link = zipfile.ZipInfo("link")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(WorkspaceError, match="symlink refused"):
        extract_archive(root, buf.getvalue())
    assert tree(root) == []


def test_clashing_or_duplicate_members_are_refused(root: Path) -> None:
    for members in (
        [("a", b"1"), ("a", b"2")],
        [("a", b"1"), ("a/b", b"2")],
        [("a/b", b"1"), ("a", b"2")],
    ):
        with pytest.raises(WorkspaceError, match="clashes"):
            extract_archive(root, tar_of(*members))
    with pytest.raises(WorkspaceError, match="clashes"):
        extract_archive(root, tar_of(("a", b"1"), header("a", tarfile.DIRTYPE)))
    assert tree(root) == []


def test_too_many_members_are_refused(root: Path) -> None:
    caps = Caps(max_archive_members=5)
    files = [(f"f{i}", b"x") for i in range(6)]
    with pytest.raises(WorkspaceError, match="over 5 members"):
        extract_archive(root, tar_of(*files), caps=caps)
    with pytest.raises(WorkspaceError, match="over 5 members"):
        extract_archive(root, zip_of(*files), caps=caps)
    assert tree(root) == []
    assert len(extract_archive(root, tar_of(*files[:5]), caps=caps)) == 5


def test_a_member_too_deep_under_into_is_refused(root: Path) -> None:
    data = tar_of(("a/b/c", b"x"))
    with pytest.raises(WorkspaceError, match="deeper than 4"):
        extract_archive(root, data, "x/y", Caps(max_depth=4))
    assert tree(root) == []


def test_garbage_is_not_an_archive(root: Path) -> None:
    good = tar_of(("a.txt", b"x" * 10_000))
    for data in (b"", b"hello, world", os.urandom(2048)):
        with pytest.raises(WorkspaceError, match="not a tar or zip archive"):
            extract_archive(root, data)
    for data in (good[: len(good) // 2], b"PK\x03\x04garbage", b"\x1f\x8b\x08junk"):
        with pytest.raises(WorkspaceError, match="corrupt archive"):
            extract_archive(root, data)
    assert tree(root) == []


# --- archives: bombs ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_gzip_tar_bomb_is_refused(root: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as archive:
        small = tarfile.TarInfo("small.txt")
        small.size = 2
        archive.addfile(small, io.BytesIO(b"ok"))
        bomb = tarfile.TarInfo("bomb")
        bomb.size = 100 * MiB
        archive.addfile(bomb, io.BufferedReader(Zeros(bomb.size)))
    data = buf.getvalue()
    assert len(data) < MiB
    with pytest.raises(WorkspaceError, match="1048576"):
        extract_archive(root, data, caps=Caps(max_file_bytes=MiB))
    assert tree(root) == []


@pytest.mark.timeout(60)
def test_a_tar_whose_long_name_header_is_a_bomb_is_refused(root: Path) -> None:
    """A GNU long-name header claims 100 MiB: tarfile would read it all into memory. What it
    reads is counted as it comes, so it stops at the caps."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT, compresslevel=1) as t:
        longname = header("././@LongLink", tarfile.GNUTYPE_LONGNAME)
        longname.size = 100 * MiB
        t.addfile(longname, io.BufferedReader(Zeros(longname.size)))
        t.addfile(tarfile.TarInfo("x"), io.BytesIO())
    caps = Caps(max_total_bytes=MiB, max_archive_members=10)
    with pytest.raises(WorkspaceError, match="expands beyond"):
        extract_archive(root, buf.getvalue(), caps=caps)
    assert tree(root) == []


@pytest.mark.timeout(60)
def test_a_zip_bomb_is_refused(root: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("small.txt", b"ok")
        with archive.open("bomb", "w") as member:
            zeros = bytes(MiB)
            for _ in range(50):
                member.write(zeros)
    data = buf.getvalue()
    assert len(data) < MiB
    with pytest.raises(WorkspaceError, match="1048576"):
        extract_archive(root, data, caps=Caps(max_file_bytes=MiB))
    assert tree(root) == []


def test_a_zip_whose_headers_understate_its_size_is_refused(root: Path) -> None:
    """Sizes patched down in both headers: the decompressed bytes, not the headers, decide."""
    real = bytes(200_000)
    data = bytearray(zip_of(("big", real)))
    size = len(real).to_bytes(4, "little")
    assert data.count(size) == 2  # the local header's and the central directory's
    data[:] = data.replace(size, (100).to_bytes(4, "little"))
    with pytest.raises(WorkspaceError, match="corrupt archive"):
        extract_archive(root, bytes(data), caps=Caps(max_file_bytes=1000))
    assert tree(root) == []


def test_extraction_caps_count_what_the_workspace_already_holds(root: Path) -> None:
    caps = Caps(max_total_bytes=1000)
    write_file(root, "existing", b"e" * 600, caps)
    data = tar_of(("d/one", b"1" * 100), ("d/two", b"2" * 400))  # 500 declared: under the cap
    before = tree(root)
    with pytest.raises(WorkspaceError, match="cap of 1000 bytes"):
        extract_archive(root, data, caps=caps)
    assert tree(root) == before  # "d/one" was written, then removed, and "d" with it
    assert [i.path for i in extract_archive(root, data, caps=Caps(max_total_bytes=1100))] == [
        "d/one",
        "d/two",
    ]


def test_extraction_caps_entries(root: Path) -> None:
    write_file(root, "existing", b"e")
    with pytest.raises(WorkspaceError, match="cap of 3 entries"):
        extract_archive(root, tar_of(("a/b", b"1"), ("c", b"2")), caps=Caps(max_files=3))
    assert [path for path, _, _ in tree(root)] == ["existing"]


def test_extraction_through_a_symlink_is_refused(root: Path, outside: Path) -> None:
    (root / "link").symlink_to(outside)
    (root / "file").symlink_to(outside / "secret.txt")
    for data, into in (
        (tar_of(("link/x", b"pwned")), ""),
        (tar_of(("x", b"pwned")), "link"),
        (tar_of(("secret.txt", b"pwned")), "link"),
        (tar_of(("file", b"pwned")), ""),
        (zip_of(("ok", b"fine"), ("file", b"pwned")), ""),
    ):
        with pytest.raises(WorkspaceError, match="not a"):
            extract_archive(root, data, into)
    assert tree(outside) == [("secret.txt", "other", b"SECRET")]
    assert tree(root) == [("file", "link", None), ("link", "link", None)]


# --- archives: what should go in, goes in -------------------------------------------------------


def test_a_tar_gz_extracts_into_a_subdirectory(root: Path) -> None:
    data = tar_of(
        header(".", tarfile.DIRTYPE),
        ("./README", b"read me"),
        header("./src", tarfile.DIRTYPE),
        ("./src/main.py", b"print('hi')\n"),
        header("empty", tarfile.DIRTYPE),
        ("deep/er/file.bin", b"\x00" * 3),
    )
    infos = extract_archive(root, data, "job/in")
    assert infos == [
        FileInfo("job/in/README", 7, sha(b"read me")),
        FileInfo("job/in/src/main.py", 12, sha(b"print('hi')\n")),
        FileInfo("job/in/deep/er/file.bin", 3, sha(b"\x00" * 3)),
    ]
    assert read_file(root, "job/in/src/main.py", 100) == b"print('hi')\n"
    assert (root / "job/in/empty").is_dir()
    assert [path for path, _, _ in tree(root) if not path.startswith("job/in/")] == [
        "job",
        "job/in",
    ]
    assert not [entry for entry in (root / "job/in").iterdir() if entry.suffix == ".part"]


@pytest.mark.parametrize("mode", ["w", "w:bz2", "w:xz"])
def test_plain_bz2_and_xz_tars_extract(root: Path, mode: str) -> None:
    infos = extract_archive(root, tar_of(("a/b.txt", b"data"), mode=mode))
    assert infos == [FileInfo("a/b.txt", 4, sha(b"data"))]


def test_a_zip_extracts_into_a_subdirectory(root: Path) -> None:
    data = zip_of(("dir/", b""), ("dir/one.txt", b"one"), ("./two.txt", b"two" * 1000))
    infos = extract_archive(root, data, "unzipped")
    assert infos == [
        FileInfo("unzipped/dir/one.txt", 3, sha(b"one")),
        FileInfo("unzipped/two.txt", 3000, sha(b"two" * 1000)),
    ]
    assert (root / "unzipped/two.txt").read_bytes() == b"two" * 1000
    assert extract_archive(root, b"PK\x05\x06" + bytes(18)) == []  # an empty zip


def test_extraction_replaces_existing_files(root: Path) -> None:
    write_file(root, "out/a.txt", b"old")
    extract_archive(root, tar_of(("a.txt", b"new")), "out")
    assert read_file(root, "out/a.txt", 10) == b"new"
    assert [entry.name for entry in (root / "out").iterdir()] == ["a.txt"]


# --- scan and usage -----------------------------------------------------------------------------


def test_scan_skips_symlinks_and_fifos_and_sorts(root: Path, outside: Path) -> None:
    write_file(root, "z.txt", b"z")
    write_file(root, "a/b.txt", b"bb")
    write_file(root, "a.txt", b"a")
    (root / "a/link").symlink_to(outside / "secret.txt")
    (root / "dirlink").symlink_to(outside)
    (root / "dangling").symlink_to(root / "nope")
    os.mkfifo(root / "a/pipe")
    assert scan(root) == [
        FileInfo("a.txt", 1, sha(b"a")),
        FileInfo("a/b.txt", 2, sha(b"bb")),
        FileInfo("z.txt", 1, sha(b"z")),
    ]
    assert len(scan(root, max_files=2)) == 2
    assert scan(root.parent / "missing") == []


def test_scan_hashes_large_files_in_full(root: Path) -> None:
    data = os.urandom(3 * MiB + 17)
    (root / "big").write_bytes(data)
    assert scan(root) == [FileInfo("big", len(data), sha(data))]


def test_usage_counts_entries_and_regular_bytes(root: Path, outside: Path) -> None:
    assert usage(root) == (0, 0)
    write_file(root, "a/b/c.txt", b"123")
    write_file(root, "d.txt", b"4567")
    (root / "link").symlink_to(outside / "secret.txt")
    os.mkfifo(root / "pipe")
    assert usage(root) == (7, 6)  # a, a/b, a/b/c.txt, d.txt, link, pipe
    assert usage(root.parent / "missing") == (0, 0)
