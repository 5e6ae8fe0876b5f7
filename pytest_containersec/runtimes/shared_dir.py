"""The host's side of a folder a container can write (the agents' run folders).

A container under test may be root inside, with CAP_SYS_ADMIN in its user namespace, and
its agent folder is bind-mounted read-write: every name in it can be replaced at any time
by a symlink, a FIFO, another directory or a file of the container's choosing. The host
(root) therefore never resolves a path through that folder. It holds a descriptor of
each object it made, created where the container cannot reach it (a host-only staging
folder, renamed in once complete), and opens names only relative to such a descriptor,
without following symlinks, after checking the object's type:

- :func:`open_in` opens ``name`` under a directory descriptor through an ``O_PATH``
  descriptor first (no side effect, whatever the object is), checks its type, then
  reopens that very inode: a name swapped between the check and the open cannot matter.
- :func:`read_small` reads at most a few bytes of a regular file (never a FIFO that
  blocks, never /dev/zero).
- :func:`clear` empties a directory through its descriptor (``shutil.rmtree`` with
  ``dir_fd``, which never follows symlinks), and :func:`remove_if_same` removes a name only
  when it still is the directory the host made.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Tampered(OSError):
    """An object in a container-writable folder is not what the host made."""


def open_dir(name: str, dir_fd: int | None = None) -> int:
    """A descriptor of directory ``name`` (never through a symlink at ``name``)."""
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def open_in(dir_fd: int, name: str, flags: int, is_type: Callable[[int], bool]) -> int:
    """Open ``name`` under ``dir_fd`` with ``flags`` if it is of the type ``is_type``
    accepts (``stat.S_ISFIFO``, ``stat.S_ISREG``); raises :class:`Tampered` otherwise."""
    path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        mode = os.fstat(path_fd).st_mode
        if not is_type(mode):
            raise Tampered(f"{name} is not the expected kind of file (mode {mode:o})")
        return os.open(f"/proc/self/fd/{path_fd}", flags | os.O_CLOEXEC)
    finally:
        os.close(path_fd)


def read_small(dir_fd: int, name: str, limit: int = 64) -> bytes | None:
    """At most ``limit`` bytes of the regular file ``name`` (None: missing or not one)."""
    try:
        fd = open_in(dir_fd, name, os.O_RDONLY | os.O_NONBLOCK, stat.S_ISREG)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def write_new(dir_fd: int, name: str, data: bytes, owner: tuple[int, int] | None = None) -> None:
    """Create ``name`` (it must not exist) with ``data``; chown the descriptor."""
    fd = os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
        dir_fd=dir_fd,
    )  # fmt: skip
    try:
        if owner is not None:
            os.fchown(fd, *owner)
        os.write(fd, data)
    finally:
        os.close(fd)


def same(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether ``a`` and ``b`` are the same inode (device and inode number)."""
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def clear(dir_fd: int) -> None:
    """Remove everything in the directory ``dir_fd`` names, following no symlink."""
    with contextlib.suppress(OSError):
        for name in os.listdir(dir_fd):
            with contextlib.suppress(OSError):
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(name, dir_fd=dir_fd, ignore_errors=True)
                else:
                    os.unlink(name, dir_fd=dir_fd)


def remove_if_same(parent_fd: int, name: str, dir_fd: int) -> None:
    """Empty ``dir_fd``, then remove ``name`` under ``parent_fd`` if it still names it."""
    clear(dir_fd)
    with contextlib.suppress(OSError):
        if same(os.stat(name, dir_fd=parent_fd, follow_symlinks=False), os.fstat(dir_fd)):
            os.rmdir(name, dir_fd=parent_fd)
