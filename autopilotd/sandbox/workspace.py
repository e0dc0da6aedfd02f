"""Safe host-side access to a sandbox job's workspace: the only code that touches its files.

A workspace is a directory that strangers' code has written into, and that users and buyers
upload into and download from. Whatever it holds, this module guarantees:

* Nothing outside the workspace root is read, written, created or removed. Every path is first
  checked by `clean_path` (no `..`, no absolute path, no empty or `.` component), then opened
  one component at a time from a file descriptor of the root, each with O_NOFOLLOW: a symlink
  anywhere on the way, planted whenever, is refused, never followed. Permissions are not relied
  on (the daemon may run as root); the descriptor walk is what confines it.
* Only regular files are read or written. A FIFO, device or socket is refused without being
  read (opened, if at all, with O_NONBLOCK, so nothing blocks). A file is written under a fresh
  temporary name and renamed over its name, so a hard link the job made is never written
  through and a reader never sees half a file.
* Archives (tar, plain or gz/bz2/xz, and zip) may hold only regular files and directories.
  Every member's header is checked before anything is written; decompressed bytes are counted
  as they come, so a bomb stops at the caps (`Caps`), not at the end of the disk; a refused
  archive leaves the workspace as it was (the one exception is in `extract_archive`).
* Sizes and counts are capped (`Caps`): one file, the whole workspace, its entries, the depth
  and length of a path, an archive's members.

The root itself is trusted: the daemon chose it. Files and directories created here belong to
the daemon's user, with modes 0o644 and 0o755; modes stored in an archive are ignored. The
functions are synchronous (the caller runs them in a thread) and raise WorkspaceError, whose
message is short and safe to show a user, for every refusal.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import io
import lzma
import os
import secrets
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Protocol

_CHUNK = 64 << 10
_NAME_MAX = 255
_WALK_DEPTH = 64  # how deep scan() and usage() descend; deeper is the job's doing
_TAR_OVERHEAD = 8 << 10  # header bytes allowed per tar member (long names, pax records)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# What open() says of a name it must not follow or enter: a symlink with O_NOFOLLOW (ELOOP;
# EMLINK on FreeBSD), not a directory with O_DIRECTORY, a socket (ENXIO).
_REFUSED_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK, errno.ENOTDIR, errno.ENXIO})
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)
_UNIX_TYPES = {
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "device",
    stat.S_IFBLK: "device",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


class WorkspaceError(Exception):
    """The request was refused; the message is short, says why, and is safe to show a user."""


@dataclass(frozen=True)
class Caps:
    max_file_bytes: int = 8 << 20  # one file, uploaded or extracted
    max_total_bytes: int = 64 << 20  # the whole workspace after it (-1: no totals checked)
    max_files: int = 1000  # entries (files+dirs) in the workspace after it
    max_depth: int = 16  # path components
    max_path_bytes: int = 255 * 4  # a relative path's UTF-8 length
    max_archive_members: int = 1000


@dataclass(frozen=True)
class FileInfo:
    path: str  # relative POSIX path inside the workspace, e.g. "out/result.txt"
    size: int
    sha256: str  # hex


_DEFAULT_CAPS = Caps()
_USER_CAPS = Caps(max_total_bytes=-1, max_files=-1)  # a user's folder: no totals to hold


# --- paths -------------------------------------------------------------------------------------


def clean_path(path: str, caps: Caps = _DEFAULT_CAPS) -> tuple[str, ...]:
    """The path's components, or WorkspaceError: refuses empty, absolute (leading '/'), any
    '..', NUL bytes, backslashes, components that are '' or '.' (so a trailing or doubled '/'),
    more than max_depth components, longer than max_path_bytes, or any component longer than
    255 bytes, and a path that is not valid UTF-8."""
    if not path:
        raise WorkspaceError("empty path")
    if "\0" in path:
        raise WorkspaceError("path contains a NUL byte")
    if "\\" in path:
        raise WorkspaceError("path contains a backslash")
    if path.startswith("/"):
        raise WorkspaceError("absolute path")
    if _utf8_length(path) > caps.max_path_bytes:
        raise WorkspaceError(f"path longer than {caps.max_path_bytes} bytes")
    parts = tuple(path.split("/"))
    if len(parts) > caps.max_depth:
        raise WorkspaceError(f"path deeper than {caps.max_depth} components")
    for part in parts:
        _check_component(part)
    return parts


def _check_component(part: str) -> None:
    if part == "":
        raise WorkspaceError("empty path component (a doubled or trailing '/')")
    if part in (".", ".."):
        raise WorkspaceError(f"'{part}' in path")
    if _utf8_length(part) > _NAME_MAX:
        raise WorkspaceError(f"path component longer than {_NAME_MAX} bytes")


def _utf8_length(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise WorkspaceError("path is not valid UTF-8") from None


def _prefixes(parts: tuple[str, ...]) -> set[tuple[str, ...]]:
    return {parts[:n] for n in range(1, len(parts) + 1)}


def _quote(name: str) -> str:
    return repr(name if len(name) <= 100 else name[:100] + "...")


# --- descriptors: every walk starts at the root and never follows a symlink ----------------------


@contextmanager
def _fd(fd: int) -> Iterator[int]:
    """Close `fd` when done."""
    try:
        yield fd
    finally:
        os.close(fd)


def _open_root(root: Path) -> int:
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise WorkspaceError("the workspace does not exist") from None


def _open_dir(dir_fd: int, name: str, shown: str) -> int:
    """The subdirectory `name` of dir_fd; refused if it is a symlink or not a directory,
    FileNotFoundError if it is missing."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _REFUSED_ERRNOS:
            raise WorkspaceError(f"not a directory: {shown}") from None
        raise


def _walk(root_fd: int, parts: tuple[str, ...], made: list[tuple[str, ...]] | None = None) -> int:
    """A new descriptor of the directory root/parts, entered one component at a time. With
    `made`, a missing directory is created (0o755) and recorded there; without it, a missing
    one is FileNotFoundError."""
    fd = os.dup(root_fd)
    try:
        for depth in range(1, len(parts) + 1):
            child = _enter(fd, parts[:depth], made)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _enter(dir_fd: int, here: tuple[str, ...], made: list[tuple[str, ...]] | None) -> int:
    name, shown = here[-1], "/".join(here)
    try:
        return _open_dir(dir_fd, name, shown)
    except FileNotFoundError:
        if made is None:
            raise
    try:
        os.mkdir(name, 0o755, dir_fd=dir_fd)
    except FileExistsError:  # raced with someone else: open it (still without following)
        return _open_dir(dir_fd, name, shown)
    made.append(here)
    fd = _open_dir(dir_fd, name, shown)
    os.fchmod(fd, 0o755)  # whatever the umask
    return fd


def _regular_or_none(dir_fd: int, name: str, shown: str) -> os.stat_result | None:
    """What lies at `name` (not followed): None if nothing, refused if not a regular file."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise WorkspaceError(f"not a regular file: {shown}")
    return st


def _open_file(dir_fd: int, name: str, shown: str) -> int:
    """A read descriptor of the regular file `name`; FileNotFoundError if it is missing."""
    if _regular_or_none(dir_fd, name, shown) is None:
        raise FileNotFoundError(errno.ENOENT, "no such file", shown)
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _REFUSED_ERRNOS:
            raise WorkspaceError(f"not a regular file: {shown}") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped since the stat above
        os.close(fd)
        raise WorkspaceError(f"not a regular file: {shown}")
    return fd


def _new_temp(dir_fd: int) -> tuple[str, int]:
    """A fresh, empty file (0o644) under a random name in dir_fd: its name and a write fd."""
    name = f".autopilotd-{secrets.token_hex(8)}.part"
    fd = os.open(name, _TEMP_FLAGS, 0o644, dir_fd=dir_fd)
    os.fchmod(fd, 0o644)
    return name, fd


def _rename(dir_fd: int, temp: str, name: str, shown: str) -> None:
    try:
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except (IsADirectoryError, NotADirectoryError):
        raise WorkspaceError(f"not a regular file: {shown}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_upto(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < limit and (chunk := os.read(fd, min(_CHUNK, limit - got))):
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _unlink_quietly(root_fd: int, parent: tuple[str, ...], name: str) -> None:
    with suppress(OSError, WorkspaceError), _fd(_walk(root_fd, parent)) as dir_fd:
        os.unlink(name, dir_fd=dir_fd)


def _remove_made(root_fd: int, made: list[tuple[str, ...]]) -> None:
    """Best effort: remove the directories this call created, deepest first, if still empty."""
    for here in reversed(made):
        with suppress(OSError, WorkspaceError), _fd(_walk(root_fd, here[:-1])) as dir_fd:
            os.rmdir(here[-1], dir_fd=dir_fd)


def _check_totals(caps: Caps, total: int, entries: int = 0) -> None:
    """Refused if the workspace would hold more than its caps allow."""
    if total > caps.max_total_bytes:
        raise WorkspaceError(f"the workspace would exceed its cap of {caps.max_total_bytes} bytes")
    if entries > caps.max_files:
        raise WorkspaceError(f"the workspace would exceed its cap of {caps.max_files} entries")


# --- one file in, one file out ------------------------------------------------------------------


def write_file(root: Path, path: str, data: bytes, caps: Caps = _DEFAULT_CAPS) -> FileInfo:
    """Create or replace the regular file `path` inside root, making parent directories (0o755).
    A symlink or non-directory on the way, or anything but a regular file at the name, is
    refused; the data goes to a temporary file that is then renamed over the name, with the
    replaced file's mode (and, as root, its owner; a new file's is its directory's). Refused
    over max_file_bytes, or when the workspace would exceed max_total_bytes (the replaced
    file's size excepted) or max_files."""
    parts = clean_path(path, caps)
    shown = "/".join(parts)
    if len(data) > caps.max_file_bytes:
        raise WorkspaceError(f"{shown} is {len(data)} bytes, over the cap of {caps.max_file_bytes}")
    total, entries = usage(root) if caps.max_total_bytes >= 0 else (0, 0)
    made: list[tuple[str, ...]] = []
    with _fd(_open_root(root)) as root_fd:
        try:
            with _fd(_walk(root_fd, parts[:-1], made)) as dir_fd:
                old = _regular_or_none(dir_fd, parts[-1], shown)
                total += len(data) - (old.st_size if old else 0)
                if caps.max_total_bytes >= 0:
                    _check_totals(caps, total, entries + len(made) + (old is None))
                _put(dir_fd, parts[-1], data, shown, old or os.fstat(dir_fd))
        except BaseException:
            _remove_made(root_fd, made)
            raise
    return FileInfo(shown, len(data), hashlib.sha256(data).hexdigest())


def write_user_file(root: Path, path: str, data: bytes) -> FileInfo:
    """write_file in a folder of the user's (a chat thread's workspace): the same refusals
    and the 8 MiB cap on the file, but no totals for the folder, which is not ours to cap."""
    return write_file(root, path, data, _USER_CAPS)


def _put(dir_fd: int, name: str, data: bytes, shown: str, like: os.stat_result) -> None:
    """Write `name` by rename, with `like`'s mode if it is a file and, as root, its owner."""
    temp, fd = _new_temp(dir_fd)
    try:
        with _fd(fd):
            if stat.S_ISREG(like.st_mode):
                os.fchmod(fd, stat.S_IMODE(like.st_mode))
            if os.geteuid() == 0:
                os.fchown(fd, like.st_uid, like.st_gid)
            _write_all(fd, data)
        _rename(dir_fd, temp, name, shown)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


def remove_file(root: Path, path: str) -> None:
    """Delete the regular file `path` inside root (a symlink on the way or at the name, or
    anything but a regular file, is refused; a missing one is WorkspaceError too)."""
    parts = clean_path(path)
    shown = "/".join(parts)
    with _fd(_open_root(root)) as root_fd:
        try:
            with _fd(_walk(root_fd, parts[:-1])) as dir_fd:
                if _regular_or_none(dir_fd, parts[-1], shown) is None:
                    raise FileNotFoundError
                os.unlink(parts[-1], dir_fd=dir_fd)
        except FileNotFoundError:
            raise WorkspaceError(f"no such file: {shown}") from None


def read_file(root: Path, path: str, max_bytes: int) -> bytes:
    """The bytes of the regular file `path` inside root. Refused: a symlink anywhere on the way
    or at the name, anything but a regular file (a FIFO cannot block: it is never opened for
    reading), a file over max_bytes, a missing file."""
    parts = clean_path(path)
    shown = "/".join(parts)
    with _fd(_open_root(root)) as root_fd:
        try:
            with _fd(_walk(root_fd, parts[:-1])) as dir_fd:
                fd = _open_file(dir_fd, parts[-1], shown)
        except FileNotFoundError:
            raise WorkspaceError(f"no such file: {shown}") from None
    with _fd(fd):
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise WorkspaceError(f"{shown} is {size} bytes, over the cap of {max_bytes}")
        data = _read_upto(fd, max_bytes + 1)
    if len(data) > max_bytes:  # it grew while we read
        raise WorkspaceError(f"{shown} is over the cap of {max_bytes} bytes")
    return data


# --- the whole tree -----------------------------------------------------------------------------

_Entry = tuple[str, int, str, os.stat_result]  # relative path, its directory's fd, name, lstat


def _tree(root: Path, *, strict: bool) -> Generator[_Entry, None, None]:
    """Every entry under root, depth first, by name, never following a symlink. Below
    _WALK_DEPTH directories: refused if `strict`, else not entered. Root missing: nothing."""
    try:
        root_fd = _open_root(root)
    except WorkspaceError:
        return
    with _fd(root_fd):
        yield from _subtree(root_fd, "", 1, strict)


def _subtree(dir_fd: int, prefix: str, depth: int, strict: bool) -> Iterator[_Entry]:
    for name in sorted(os.listdir(dir_fd)):
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        yield prefix + name, dir_fd, name, st
        if not stat.S_ISDIR(st.st_mode):
            continue
        if depth >= _WALK_DEPTH:
            if strict:
                raise WorkspaceError(f"the workspace is nested over {_WALK_DEPTH} levels deep")
            continue
        try:
            child = _open_dir(dir_fd, name, prefix + name)
        except (OSError, WorkspaceError):  # gone, swapped or unreadable since listed
            continue
        with _fd(child):
            yield from _subtree(child, f"{prefix}{name}/", depth + 1, strict)


def scan(root: Path, max_files: int = 10_000) -> list[FileInfo]:
    """Every regular file under root, sorted by path, with its size and sha256, never following
    a symlink; symlinks, FIFOs, devices and sockets are skipped, and so is a file whose path
    read_file would refuse (not UTF-8, too deep, ...). At most max_files files (the first ones
    met, depth first by name). Root missing: []."""
    found: list[FileInfo] = []
    with closing(_tree(root, strict=False)) as entries:
        for rel, dir_fd, name, st in entries:
            if len(found) >= max_files:
                break
            if stat.S_ISREG(st.st_mode) and _is_clean(rel):
                info = _hash_file(dir_fd, name, rel)
                if info is not None:
                    found.append(info)
    return sorted(found, key=lambda info: info.path)


def _is_clean(rel: str) -> bool:
    try:
        clean_path(rel)
    except WorkspaceError:
        return False
    return True


def _hash_file(dir_fd: int, name: str, rel: str) -> FileInfo | None:
    try:
        fd = _open_file(dir_fd, name, rel)
    except (OSError, WorkspaceError):  # gone or swapped since listed
        return None
    with _fd(fd):
        digest, size = hashlib.sha256(), 0
        while chunk := os.read(fd, _CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileInfo(rel, size, digest.hexdigest())


def usage(root: Path) -> tuple[int, int]:
    """(total bytes of regular files, number of entries of any kind) under root, without
    following symlinks. Root missing: (0, 0)."""
    total = entries = 0
    for _rel, _dir_fd, _name, st in _tree(root, strict=True):
        entries += 1
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total, entries


# --- archives -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    """One archive member as its header describes it."""

    name: str
    kind: str  # "file", "directory", or what else it is ("symlink", "hard link", ...)
    size: int
    open: Callable[[], IO[bytes]]


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...
    def close(self) -> None: ...


class _Capped:
    """A forward-only stream that refuses to yield more than `limit` bytes of `inner`: what tar
    reads, headers included (a long-name header can claim any size), is counted as it comes."""

    def __init__(self, inner: _Readable, limit: int) -> None:
        self._inner, self._limit, self._seen = inner, limit, 0

    def read(self, size: int = -1, /) -> bytes:
        room = self._limit + 1 - self._seen
        data = self._inner.read(room if size < 0 else min(size, room))
        self._seen += len(data)
        if self._seen > self._limit:
            raise WorkspaceError("archive expands beyond the workspace's caps")
        return data

    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("read-only")

    def tell(self) -> int:
        return self._seen

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("forward only")

    def close(self) -> None:
        self._inner.close()


@contextmanager
def _archive_errors() -> Iterator[None]:
    """Whatever a broken archive makes the decoders raise, as a WorkspaceError."""
    try:
        yield
    except _ARCHIVE_ERRORS as exc:
        raise WorkspaceError(f"corrupt archive: {str(exc)[:200]}") from None


def _decompressed(data: bytes) -> _Readable:
    raw = io.BytesIO(data)
    if data.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if data.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if data.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


def _tar_members(data: bytes, caps: Caps) -> Generator[_Member, None, None]:
    """The members of a tar, read forward only (tarfile's stream mode) from a stream we
    decompress ourselves, so that every byte tarfile sees is counted against the caps."""
    limit = caps.max_total_bytes + (caps.max_archive_members + 2) * _TAR_OVERHEAD
    with (
        _archive_errors(),
        closing(_Capped(_decompressed(data), limit)) as stream,
        _open_tar(stream) as archive,
    ):
        for info in archive:
            data_of = partial(_tar_data, archive, info)
            yield _Member(info.name, _tar_kind(info), info.size, data_of)


def _open_tar(stream: _Capped) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=stream, mode="r|")
    except tarfile.ReadError:  # its first header is not one
        raise WorkspaceError("not a tar or zip archive") from None


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.isfile():
        return "file"
    if info.isdir():
        return "directory"
    if info.issym():
        return "symlink"
    if info.islnk():
        return "hard link"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "fifo"
    return "special file"


def _tar_data(archive: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    stream = archive.extractfile(info)
    if stream is None:
        raise WorkspaceError(f"corrupt archive: no data for {_quote(info.name)}")
    return stream


def _zip_members(data: bytes) -> Generator[_Member, None, None]:
    with _archive_errors(), zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            data_of = partial(archive.open, info)
            yield _Member(info.filename, _zip_kind(info), info.file_size, data_of)


def _zip_kind(info: zipfile.ZipInfo) -> str:
    kind = stat.S_IFMT(info.external_attr >> 16)  # the Unix mode, where the archiver kept one
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return _UNIX_TYPES.get(kind, "special file")
    if info.is_dir() or kind == stat.S_IFDIR:
        return "directory"
    if info.flag_bits & 0x1:
        return "encrypted file"
    return "file"


class _Checker:
    """Checks members one by one as their headers come: kind, name, count, declared sizes, and
    that no two members claim the same path or a file and a directory the same path."""

    def __init__(self, base: tuple[str, ...], caps: Caps) -> None:
        self.base, self.caps = base, caps
        self.count = self.declared = 0
        self.files: set[tuple[str, ...]] = set()
        self.dirs = _prefixes(base)

    def target(self, member: _Member) -> tuple[str, ...] | None:
        """Where the member goes, relative to the root (None: the archive's own '.')."""
        self.count += 1
        if self.count > self.caps.max_archive_members:
            raise WorkspaceError(f"archive has over {self.caps.max_archive_members} members")
        shown = _quote(member.name)
        if member.kind not in ("file", "directory"):
            raise WorkspaceError(
                f"archive member {shown}: {member.kind} refused (only files and directories)"
            )
        name = member.name.removeprefix("./")
        if member.kind == "directory":
            name = name.removesuffix("/")
            if name in ("", "."):
                return None
        try:
            target = self.base + clean_path(name, self.caps)
            clean_path("/".join(target), self.caps)  # depth and length under `into`
        except WorkspaceError as exc:
            raise WorkspaceError(f"archive member {shown}: {exc}") from None
        if member.kind == "file":
            self._add_file(target, member.size, shown)
        else:
            self._add_dirs(_prefixes(target), shown)
        return target

    def _add_file(self, target: tuple[str, ...], size: int, shown: str) -> None:
        if size > self.caps.max_file_bytes:
            cap = self.caps.max_file_bytes
            raise WorkspaceError(f"archive member {shown} is {size} bytes, over the cap of {cap}")
        self.declared += size
        if self.declared > self.caps.max_total_bytes:
            raise WorkspaceError(f"archive holds over {self.caps.max_total_bytes} bytes")
        if target in self.files or target in self.dirs:
            raise WorkspaceError(f"archive member {shown} clashes with another member")
        self._add_dirs(_prefixes(target[:-1]), shown)
        self.files.add(target)

    def _add_dirs(self, dirs: set[tuple[str, ...]], shown: str) -> None:
        if dirs & self.files:
            raise WorkspaceError(f"archive member {shown} clashes with another member")
        self.dirs |= dirs


def _members(
    data: bytes, base: tuple[str, ...], caps: Caps
) -> Generator[tuple[tuple[str, ...], _Member], None, None]:
    """Each member with its target path, checked as its header comes."""
    raw = _zip_members(data) if data[:4] in _ZIP_MAGIC else _tar_members(data, caps)
    checker = _Checker(base, caps)
    with closing(raw):
        for member in raw:
            target = checker.target(member)
            if target is not None:
                yield target, member


class _Extraction:
    """One archive being unpacked: each file is written under a temporary name next to its
    target, and only when all are written are they renamed into place."""

    def __init__(self, root_fd: int, caps: Caps, total: int, entries: int) -> None:
        self.root_fd, self.caps = root_fd, caps
        self.total, self.entries = total, entries  # the workspace's, as the archive goes in
        self.made: list[tuple[str, ...]] = []  # directories created, in order
        self.staged: dict[tuple[str, ...], str] = {}  # target -> its temporary name
        self.new: set[tuple[str, ...]] = set()  # targets where nothing was before
        self.placed: list[tuple[str, ...]] = []  # targets renamed into place
        self.infos: dict[tuple[str, ...], FileInfo] = {}

    def add(self, target: tuple[str, ...], member: _Member) -> None:
        if member.kind == "directory":
            os.close(_walk(self.root_fd, target, self.made))
            self._check()
            return
        shown = "/".join(target)
        with _fd(_walk(self.root_fd, target[:-1], self.made)) as dir_fd:
            old = _regular_or_none(dir_fd, target[-1], shown)
            if old is None:
                self.new.add(target)
            else:
                self.total -= old.st_size
            self._check()
            temp, fd = _new_temp(dir_fd)
            self.staged[target] = temp
            with _fd(fd):
                self.infos[target] = self._copy(member, fd, shown)

    def _check(self) -> None:
        _check_totals(self.caps, self.total, self.entries + len(self.made) + len(self.new))

    def _copy(self, member: _Member, fd: int, shown: str) -> FileInfo:
        """Copy the member's data, counting what actually comes out of the decompressor."""
        digest, size = hashlib.sha256(), 0
        with _archive_errors():
            stream = member.open()
        with stream:
            while True:
                with _archive_errors():
                    chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                self.total += len(chunk)
                if size > self.caps.max_file_bytes:
                    raise WorkspaceError(
                        f"archive member {shown} expands beyond {self.caps.max_file_bytes} bytes"
                    )
                _check_totals(self.caps, self.total)
                digest.update(chunk)
                _write_all(fd, chunk)
        return FileInfo(shown, size, digest.hexdigest())

    def commit(self) -> None:
        for target, temp in list(self.staged.items()):
            with _fd(_walk(self.root_fd, target[:-1])) as dir_fd:
                _rename(dir_fd, temp, target[-1], "/".join(target))
            del self.staged[target]
            self.placed.append(target)

    def abort(self) -> None:
        """Best effort: remove the temporary files, the files placed where nothing was, and the
        directories made. A file already renamed over an old one stays."""
        for target, temp in self.staged.items():
            _unlink_quietly(self.root_fd, target[:-1], temp)
        for target in self.placed:
            if target in self.new:
                _unlink_quietly(self.root_fd, target[:-1], target[-1])
        _remove_made(self.root_fd, self.made)


def extract_archive(
    root: Path, data: bytes, into: str = "", caps: Caps = _DEFAULT_CAPS
) -> list[FileInfo]:
    """Unpack a tar (plain, gz, bz2 or xz) or zip archive into the directory `into` ('': the
    root) of the workspace, and return a FileInfo for each file written, in archive order.

    Only regular files and directories are accepted. A symlink, hard link, device or FIFO, a
    name that clean_path refuses (after one leading './' is stripped; a directory named '.' is
    skipped), two members at one path, more than max_archive_members members, or a member
    whose header declares more than the caps, refuses the whole archive before anything is
    written: every header is read first. Then each file is written under a temporary name while
    the bytes that come out of the decompressor are counted, stopping as soon as one member
    passes max_file_bytes or the workspace (what it held, less the files being replaced) would
    pass max_total_bytes or max_files. On a refusal, what this call wrote is removed (best
    effort) and the workspace is as it was. Only when every file is written are they renamed
    into place; if that fails part way (only a concurrent change to the workspace can make it),
    the files already renamed over old ones stay replaced. Archive file modes are ignored."""
    base = clean_path(into, caps) if into else ()
    for _target, _member in _members(data, base, caps):
        pass  # every header checked before anything is written
    with _fd(_open_root(root)) as root_fd:
        extraction = _Extraction(root_fd, caps, *usage(root))
        try:
            with closing(_members(data, base, caps)) as members:
                for target, member in members:
                    extraction.add(target, member)
            extraction.commit()
        except BaseException:
            extraction.abort()
            raise
    return list(extraction.infos.values())
