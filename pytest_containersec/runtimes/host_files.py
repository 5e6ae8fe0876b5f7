"""Files root keeps about the daemons it starts, and the folders of a less-privileged user
that root must touch (the rootless user's runtime folder).

The rootless daemons run as an unprivileged user, who owns ``$XDG_RUNTIME_DIR`` and
everything in it and can replace any name there at any moment (a symlink to a host file,
a FIFO, a huge file). That user is not trusted with anything root decides on, so:

- records, logs, locks and leases live in a folder only root can write
  (:func:`private_dir`), opened without following a symlink at the last component;
- in the user's folder root only creates (``fchown`` of a descriptor, never a path),
  unlinks and removes trees relative to a descriptor opened component by component with
  ``O_NOFOLLOW`` from a *trusted* base (:func:`open_below`): a folder whose own parent the
  user cannot write, such as ``/run/user/UID``;
- reads are bounded and of regular files only (:func:`read_small`, :func:`tail`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path

from .shared_dir import DIR_FLAGS, Tampered

RECORD_LIMIT = 64 * 1024
TAIL_LIMIT = 64 * 1024


def _check_private(st: os.stat_result, what: Path) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise Tampered(f"{what} is not a directory")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise Tampered(
            f"{what} must be owned by uid {os.geteuid()} and writable by it alone "
            f"(owner {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}): remove it"
        )


def private_dir(path: Path, mode: int = 0o755) -> None:
    """Create ``path`` if missing; raise :class:`Tampered` unless it (not a symlink) and its
    parent are directories owned by us that nobody else can write."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    fd = os.open(path, DIR_FLAGS)  # ELOOP if a symlink was planted there
    try:
        _check_private(os.fstat(fd), path)
        _check_private(os.stat("..", dir_fd=fd), path.parent)
    finally:
        os.close(fd)


def open_below(base: Path, path: Path) -> int:
    """A descriptor of directory ``path``, a folder below ``base``: ``base`` is opened as
    is (trusted), every component after it with ``O_NOFOLLOW``."""
    rel = path.relative_to(base).parts
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel:
            if part in ("", ".", ".."):
                raise Tampered(f"{path}: {part!r} in a path below {base}")
            nfd = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def user_dir(base: Path, path: Path, uid: int, gid: int) -> None:
    """Create ``path`` (below the trusted ``base``) as a 0700 folder owned by ``uid``.

    An existing folder must be a real directory owned by ``uid`` (or by us, then it is
    handed over); a symlink, a file or another user's folder raise :class:`Tampered`.
    """
    parent = open_below(base, path.parent)
    try:
        made = False
        with contextlib.suppress(FileExistsError):
            os.mkdir(path.name, 0o700, dir_fd=parent)
            made = True
        try:
            fd = os.open(path.name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:  # ELOOP/ENOTDIR: a symlink or a file where the folder was
            raise Tampered(f"{path} is not a real folder ({exc.strerror}): remove it") from None
        try:
            st = os.fstat(fd)
            if st.st_uid != uid and (st.st_uid != os.geteuid() or st.st_mode & 0o022):
                raise Tampered(f"{path} belongs to uid {st.st_uid}, not {uid}: remove it")
            if made or st.st_uid != uid:
                os.fchown(fd, uid, gid)
        finally:
            os.close(fd)
    finally:
        os.close(parent)


def unlink_below(base: Path, path: Path) -> None:
    """Unlink ``path`` (a socket, a file, a symlink: never what it points to), if there."""
    with contextlib.suppress(OSError):
        fd = open_below(base, path.parent)
        try:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(path.name, dir_fd=fd)
        finally:
            os.close(fd)


def remove_tree_below(base: Path, path: Path) -> None:
    """Remove the directory ``path`` and its contents, following no symlink on the way."""
    with contextlib.suppress(OSError):
        fd = open_below(base, path.parent)
        try:
            st = os.stat(path.name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path.name, dir_fd=fd, ignore_errors=True)
        finally:
            os.close(fd)


def socket_owned_by(path: Path, uid: int) -> bool:
    """Whether ``path`` itself (not a symlink's target) is a socket owned by ``uid``."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISSOCK(st.st_mode) and st.st_uid == uid


def _open_regular(path: Path, owner: int | None = None) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or (owner is not None and st.st_uid != owner):
        os.close(fd)
        return None
    return fd


def read_small(path: Path, limit: int = RECORD_LIMIT, owner: int | None = None) -> bytes | None:
    """At most ``limit`` bytes of the regular file ``path`` (None: missing, a symlink, a
    FIFO, a device, larger than ``limit``, or not ``owner``'s when given)."""
    fd = _open_regular(path, owner)
    if fd is None:
        return None
    try:
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    return data if len(data) <= limit else None


def tail(path: Path, lines: int = 20, limit: int = TAIL_LIMIT) -> str:
    """The last ``lines`` lines of the last ``limit`` bytes of a log, for error messages."""
    fd = _open_regular(path)
    if fd is None:
        return "(no log)"
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        os.lseek(fd, max(0, size - limit), os.SEEK_SET)
        data = os.read(fd, limit)
    finally:
        os.close(fd)
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:]) or "(empty log)"


def write_private(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` (in a :func:`private_dir`) with ``data``, never through a symlink."""
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def open_log(path: Path) -> int:
    """A fresh log file at ``path`` (in a :func:`private_dir`), opened for writing."""
    with contextlib.suppress(FileNotFoundError, IsADirectoryError):
        os.unlink(path)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
