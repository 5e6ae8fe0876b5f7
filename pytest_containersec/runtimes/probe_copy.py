"""Each container's own probe folder, and the checks that it is still what the host wrote.

Every container gets a fresh copy of the probe folder (the host's static busybox,
``notamodule.ko`` and the empty mount points ``mnt``, ``run`` and ``tools``), bind-mounted
read-only at /.containersec. A container that can remount the bind read-write (root with
CAP_SYS_ADMIN and no user namespace: ``privileged=True``, ``cap_add=["SYS_ADMIN"]``) can
change only its own copy, which no other container ever sees and which is removed with it.

Nothing the container can write is trusted. Before and after each probe exec (and when the
container stops) :meth:`ProbeCopy.problems` checks, as root on the host:

- the host folder: the same entries, types, owners, modes, inodes, sizes, mtime and ctime
  as written, no extra entry, and the files' bytes, compared with what was written (a
  rewrite restored afterwards still changes the ctime);
- what the container sees: ``/proc/<pid>/root/.containersec`` and the files in it are
  the very inodes of that folder (nothing mounted over them, no symlink in their place).

Layout: ``$STATE/probe/c/<container name>/owner`` (the session's owner token, never
mounted) and ``.../probe/`` (the folder the container gets); :func:`reap` removes the
copies of dead sessions.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import RuntimeUnavailable
from ..linux import hostinfo, session
from .base import PROBE_DIR

NOT_A_MODULE = b"\x7fELF containersec: not a kernel module\n"
FILES: dict[str, int] = {"busybox": 0o755, "notamodule.ko": 0o644}
DIRS: tuple[str, ...] = ("mnt", "run", "tools")
MAX_DIFFS = 8  # problems named at most (one per entry is plenty)


def copies_root() -> Path:
    """``$STATE/probe/c``: one folder per container's probe copy, walked by :func:`reap`."""
    return session.STATE_DIR / "probe" / "c"


TOOLS_LOADER = "ld.so"  # the host's dynamic loader, named so in tools/


@functools.cache
def _tool_files() -> tuple[tuple[str, bytes], ...]:
    """The host's util-linux setpriv, the libraries it links and their loader, as
    (name in tools/, content): run as ``tools/ld.so --library-path tools tools/setpriv``,
    it needs nothing from the image."""
    exe = shutil.which("setpriv")
    if exe is None:
        raise RuntimeUnavailable(
            "containersec", "util-linux setpriv not found", "apt-get install util-linux"
        )
    out = subprocess.run(["ldd", exe], capture_output=True, text=True, check=True).stdout
    files = [exe]
    for line in out.splitlines():
        words = line.split()
        if "=>" in words and len(words) > 2 and words[2].startswith("/"):
            files.append(words[2])
        elif words and words[0].startswith("/"):
            files.append(words[0])
    named = []
    for f in files:
        name = TOOLS_LOADER if "/ld-linux" in f or "/ld64" in f else os.path.basename(f)
        named.append((name, Path(f).read_bytes()))
    return tuple(named)


@functools.cache
def _busybox() -> bytes:
    """The host's static busybox, read once per process: every copy is compared with these
    bytes (a comparison, not a hash: SHA-256 of its 2 MB costs ~17 ms under TCG)."""
    return Path(hostinfo.static_busybox()).read_bytes()


@dataclass(frozen=True)
class _Stat:
    kind: int  # S_IFMT
    mode: int
    uid: int
    gid: int
    ino: int
    dev: int
    size: int
    nlink: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> _Stat:
        return cls(
            stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            st.st_ino, st.st_dev, st.st_size, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns,
        )  # fmt: skip


def _describe(name: str, want: _Stat, got: _Stat) -> str:
    fields = [
        f for f in ("kind", "mode", "uid", "gid", "ino", "size", "nlink", "mtime_ns", "ctime_ns")
        if getattr(want, f) != getattr(got, f)
    ]  # fmt: skip
    return f"{name}: {', '.join(fields)} changed"


class ProbeCopy:
    """One container's probe folder on the host (``path`` is what gets bind-mounted)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "probe"
        self._stats: dict[str, _Stat] = {}
        self._contents: dict[str, bytes] = {}  # what was written to each file
        self._owned = True

    @property
    def owned(self) -> bool:
        """False for a :meth:`shared` handle (removed by whoever created the folder)."""
        return self._owned

    def shared(self) -> ProbeCopy:
        """A handle on the same folder for a container that shares it (the units of one
        booted systemd, whose user namespace cannot write it): checks it, never removes it."""
        other = ProbeCopy(self.root)
        other._stats, other._contents, other._owned = self._stats, self._contents, False
        other._tools = self._tools
        return other

    @classmethod
    @contextlib.contextmanager
    def made(cls, name: str) -> Iterator[ProbeCopy]:
        """:meth:`create`, removed again when the block fails (the start it was for)."""
        copy = cls.create(name)
        try:
            yield copy
        except BaseException:
            copy.remove()
            raise

    @classmethod
    def create(cls, name: str) -> ProbeCopy:
        """Write a fresh copy for the container ``name`` (world-readable, root-owned, so
        rootless engines can mount it and nobody but root can change it)."""
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad container name for a probe copy: {name!r}")
        base = copies_root()
        base.mkdir(parents=True, exist_ok=True)
        for p in (base.parent.parent, base.parent, base):
            with contextlib.suppress(OSError):
                p.chmod(0o755)
        root = base / name
        root.mkdir(mode=0o755)  # FileExistsError: never reuse a folder
        try:
            root.chmod(0o755)
            session.claim(root)
            probe = root / "probe"
            probe.mkdir()
            for sub in DIRS:
                (probe / sub).mkdir()
            contents = {"busybox": _busybox(), "notamodule.ko": NOT_A_MODULE}
            for fname, mode in FILES.items():
                fd = os.open(probe / fname, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
                with os.fdopen(fd, "wb") as f:
                    f.write(contents[fname])
                os.chmod(probe / fname, mode)
            for folder in (probe, *(probe / sub for sub in DIRS)):
                folder.chmod(0o755)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        copy = cls(base / name)
        copy._record(contents)
        return copy

    def _record(self, written: dict[str, bytes]) -> None:
        """Remember the folder's entries as they are now and ``written``, the bytes just
        written to its files."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            self._stats["."] = _Stat.of(os.fstat(fd))
            for name in (*FILES, *DIRS, *self._tools):
                self._stats[name] = _Stat.of(os.stat(name, dir_fd=fd, follow_symlinks=False))
        finally:
            os.close(fd)
        self._contents.update(written)

    _tools: tuple[str, ...] = ()  # "tools/NAME" entries, once add_tools() wrote them

    def add_tools(self) -> None:
        """Write the host's setpriv, its libraries and loader into ``tools/`` (once, for a
        container whose probe must take on another identity). Only onto an intact copy:
        a modified one stays modified (the next check reports it)."""
        if self._tools or not self._owned or self.host_problems():
            return
        tools = self.path / "tools"
        names, written = [], {}
        for name, data in _tool_files():
            mode = 0o644 if ".so." in name and name != TOOLS_LOADER else 0o755
            fd = os.open(tools / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tools / name, mode)
            names.append(f"tools/{name}")
            written[f"tools/{name}"] = data
        self._tools = tuple(names)
        self._record(written)  # the other files were checked intact just now

    # -- checks -------------------------------------------------------------------------

    def host_problems(self) -> list[str]:
        """How the host folder differs from what was written ([] when intact)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            return [f"{self.path}: {exc.strerror}"]
        out: list[str] = []
        try:
            got = _Stat.of(os.fstat(fd))
            if got != self._stats["."]:
                out.append(_describe("the folder", self._stats["."], got))
            extra = sorted(set(os.listdir(fd)) - set(self._stats))
            with contextlib.suppress(OSError):
                tfd = os.open("tools", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                try:
                    extra += sorted({f"tools/{n}" for n in os.listdir(tfd)} - set(self._stats))
                finally:
                    os.close(tfd)
            out += [f"{n}: added" for n in extra[:MAX_DIFFS]]
            for name, want in self._stats.items():
                if name == ".":
                    continue
                try:
                    now = _Stat.of(os.stat(name, dir_fd=fd, follow_symlinks=False))
                except OSError as exc:
                    out.append(f"{name}: {exc.strerror}")
                    continue
                if now != want:
                    out.append(_describe(name, want, now))
                elif name in self._contents and not _holds(fd, name, self._contents[name]):
                    out.append(f"{name}: content changed")
        finally:
            os.close(fd)
        return out[:MAX_DIFFS]

    def inside_problems(self, pid: int, proc: Path = Path("/proc")) -> list[str]:
        """How what process ``pid`` sees at /.containersec differs from this folder: a
        mount over it or over a file in it, or a symlink in its place ([] when the same)."""
        where = f"{proc}/{pid}/root{PROBE_DIR}"
        try:
            if stat.S_ISLNK(os.lstat(where).st_mode):
                return [f"{PROBE_DIR} is a symlink inside"]
            fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return [f"{PROBE_DIR} is gone inside (or process {pid} exited)"]
        except OSError as exc:
            return [f"{PROBE_DIR} inside: {exc.strerror}"]
        out: list[str] = []
        try:
            st = os.fstat(fd)
            want = self._stats["."]
            if (st.st_dev, st.st_ino) != (want.dev, want.ino):
                out.append(f"{PROBE_DIR} inside is not the container's probe folder")
            for name in (*FILES, *self._tools):
                want = self._stats[name]
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                except OSError as exc:
                    out.append(f"{PROBE_DIR}/{name} inside: {exc.strerror}")
                    continue
                if (st.st_dev, st.st_ino) != (want.dev, want.ino):
                    out.append(f"{PROBE_DIR}/{name} inside is another file")
        finally:
            os.close(fd)
        return out

    def problems(self, pid: int | None) -> list[str]:
        """Both checks (the inside one only for a live ``pid``)."""
        out = self.host_problems()
        if pid:
            out += self.inside_problems(pid)
        return out

    def remove(self) -> None:
        """Delete the folder (not for a :meth:`shared` handle). Idempotent."""
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)  # fd-based: never follows links


def _holds(dir_fd: int, name: str, want: bytes) -> bool:
    """Whether the file ``name`` holds exactly ``want`` (read at most one byte past it)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as f:
        return f.read(len(want) + 1) == want


def reap() -> int:
    """Remove the probe copies of sessions whose process is dead."""
    n = 0
    try:
        entries = list(os.scandir(copies_root()))
    except OSError:
        return 0
    for entry in entries:
        if not entry.is_dir(follow_symlinks=False) or not session.orphaned(Path(entry.path)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        n += 1
    return n
