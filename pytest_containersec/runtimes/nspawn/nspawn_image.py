"""Root filesystems for nspawn: a cache exported once from Docker or Podman, private copies.

``$STATE/images/<image, '/' and ':' -> '_'>/rootfs`` is shared and never modified once
published (export into a temporary directory, then one ``rename``). Each container gets
``cp -a --reflink=auto`` of it: measured here (ext4, no reflink) 12 ms for the 2 MB probe,
and an overlayfs mount cannot be used with ``--private-users-ownership=map`` (nspawn 252:
"ID mapped mounts are apparently not available"), while ``chown`` ownership would copy up
every file anyway. Files the container needs but the image lacks (etc/os-release, usr/,
bind-mount and API filesystem mount points) are added to the copy only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ...errors import ImageNotFound
from ...linux import session

EXPORT_TIMEOUT = 300
LOOKUP_TIMEOUT = 8
OS_RELEASE = b'ID=containersec-image\nNAME="image exported by pytest-containersec"\n'
MOUNT_POINTS = ("usr", "dev", "proc", "sys", "run", "tmp", "var/tmp")
TAR_X = ["tar", "--numeric-owner", "-xpf", "-", "-C"]


def cache_key(image: str) -> str:
    """The image's folder name under ``$STATE/images``: ``/`` and ``:`` become ``_``."""
    return image.replace("/", "_").replace(":", "_")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def rootfs(image: str, state: Path, runtime: str) -> tuple[Path, dict[str, str]]:
    """The cached rootfs of ``image`` (exported now if missing) and its image env."""
    images = state / "images"
    final = images / cache_key(image)
    if not (final / "rootfs").is_dir():
        images.mkdir(parents=True, exist_ok=True)
        with _locked(images / ".export.lock"):
            if not (final / "rootfs").is_dir():
                tmp = Path(tempfile.mkdtemp(prefix=f".{cache_key(image)}.", dir=images))
                try:
                    _export(image, tmp, runtime)
                    if final.exists():
                        shutil.rmtree(final)  # a half-made entry from another version
                    os.rename(tmp, final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    env: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((final / "config.json").read_text())
        env = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)
    return final / "rootfs", env


def _export(image: str, dest: Path, runtime: str) -> None:
    tried = []
    if _export_docker(image, dest):
        return
    tried.append("docker")
    if shutil.which("podman") and _export_podman(image, dest):
        return
    tried.append("podman")
    raise ImageNotFound(
        runtime,
        image,
        f"not in the nspawn cache nor in the local {' or '.join(tried)} store; "
        "build or import it locally (pytest-containersec never pulls)",
    )


def _export_docker(image: str, dest: Path) -> bool:
    try:
        import docker
        import docker.errors
    except ImportError:
        return False
    try:
        client = docker.DockerClient(
            base_url=os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock",
            timeout=LOOKUP_TIMEOUT,
        )
    except docker.errors.DockerException:
        return False
    try:
        try:
            img = client.images.get(image)
        except (docker.errors.DockerException, OSError):
            return False
        client.api.timeout = EXPORT_TIMEOUT
        ctr = client.containers.create(
            image, entrypoint=["/containersec-export"], labels=session.current().labels
        )
        try:
            (dest / "rootfs").mkdir()
            proc = subprocess.Popen([*TAR_X, str(dest / "rootfs")], stdin=subprocess.PIPE)
            assert proc.stdin is not None
            try:
                for chunk in ctr.export():
                    proc.stdin.write(chunk if isinstance(chunk, bytes) else chunk.encode())
            finally:
                proc.stdin.close()
            if proc.wait(EXPORT_TIMEOUT) != 0:
                raise OSError(f"tar failed extracting {image}")
        finally:
            ctr.remove(force=True)
        _drop_engine_marker(dest / "rootfs")
        (dest / "config.json").write_text(json.dumps(img.attrs.get("Config") or {}))
        return True
    finally:
        client.close()


def _drop_engine_marker(root: Path) -> None:
    """``docker export`` adds /.dockerenv: not part of the image, and it would tell
    detection tools inside that they run under Docker. Removed only as an empty regular
    file reached without symlinks (the image's ``run`` may be a link to a host folder)."""
    for marker in (".dockerenv", "run/.containerenv"):
        *dirs, name = marker.split("/")
        fd = _open_dir(root, dirs, create=False)
        if fd is None:
            continue
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(name, dir_fd=fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _podman(*args: str, timeout: float = LOOKUP_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _export_podman(image: str, dest: Path) -> bool:
    try:
        if _podman("image", "exists", image).returncode != 0:
            return False
        made = _podman("create", "--pull=never", "--entrypoint=/containersec-export", image)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if made.returncode != 0:
        return False
    cid = made.stdout.strip()
    try:
        (dest / "rootfs").mkdir()
        exp = subprocess.Popen(["podman", "export", cid], stdout=subprocess.PIPE)
        tar = subprocess.run([*TAR_X, str(dest / "rootfs")], stdin=exp.stdout, check=False)
        if exp.wait(EXPORT_TIMEOUT) != 0 or tar.returncode != 0:
            raise OSError(f"podman export of {image} failed")
        _drop_engine_marker(dest / "rootfs")
        inspect = _podman("image", "inspect", image)
        with contextlib.suppress(ValueError, IndexError, KeyError):
            (dest / "config.json").write_text(json.dumps(json.loads(inspect.stdout)[0]["Config"]))
        return True
    finally:
        _podman("rm", "-f", cid)


# -- inside a private copy: never follow the image's symlinks out of it ----------------


def _open_dir(root: Path, parts: list[str], create: bool) -> int | None:
    """A descriptor of ``root/parts...`` reached without following a symlink (None: a
    component is missing, not a directory, or a symlink)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for part in parts:
        if part in ("", ".", ".."):
            os.close(fd)
            return None
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
        try:
            nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                          dir_fd=fd)  # fmt: skip
        except OSError:
            os.close(fd)
            return None  # missing, or a symlink: leave it to nspawn (it resolves in-root)
        os.close(fd)
        fd = nfd
    return fd


def read_file(root: Path, rel: str) -> str | None:
    """Text of ``root/rel`` if it is a regular file reached without symlinks."""
    *dirs, name = rel.strip("/").split("/")
    fd = _open_dir(root, dirs, create=False)
    if fd is None:
        return None
    try:
        f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    with os.fdopen(f, "rb") as fh:
        return fh.read(4 * 1024 * 1024).decode("utf-8", "replace")


def lexists_in(root: Path, rel: str) -> bool:
    """Whether ``root/rel`` exists (as a name: a dangling symlink counts), its folders
    reached without symlinks; a folder that is a symlink counts as existing (nspawn resolves
    it inside the tree), never looked up through it on the host."""
    *dirs, name = rel.strip("/").split("/")
    fd = _open_dir(root, dirs, create=False)
    if fd is None:
        return any(os.path.islink(root.joinpath(*dirs[: i + 1])) for i in range(len(dirs)))
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def ensure_path(root: Path, rel: str, is_dir: bool) -> None:
    """Create a mount target (directory, or empty file) inside ``root`` if missing."""
    *dirs, name = rel.strip("/").split("/")
    fd = _open_dir(root, dirs, create=True)
    if fd is None:
        return
    try:
        if is_dir:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o755, dir_fd=fd)
        else:
            with contextlib.suppress(FileExistsError):
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def prepare_copy(cache: Path, dest: Path) -> None:
    """Private copy of the cached rootfs that nspawn accepts as an OS tree."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(cache), str(dest)], check=True)
    if not lexists_in(dest, "etc/os-release") and not lexists_in(dest, "usr/lib/os-release"):
        ensure_path(dest, "etc/os-release", is_dir=False)
        fd = _open_dir(dest, ["etc"], create=False)
        if fd is not None:
            try:
                f = os.open("os-release", os.O_WRONLY | os.O_NOFOLLOW | os.O_TRUNC, dir_fd=fd)
                os.write(f, OS_RELEASE)
                os.close(f)
            finally:
                os.close(fd)
    for d in MOUNT_POINTS:  # nspawn mounts API filesystems there (needed under --read-only)
        ensure_path(dest, d, is_dir=True)


def write_new(root: Path, rel: str, data: bytes, mode: int = 0o644) -> bool:
    """Create ``root/rel`` (and its folders) with ``data``; False when a folder on the way
    is a symlink or the file already exists (nothing is written through the image's links)."""
    *dirs, name = rel.strip("/").split("/")
    fd = _open_dir(root, dirs, create=True)
    if fd is None:
        return False
    try:
        f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=fd)
    except OSError:
        return False
    finally:
        os.close(fd)
    with os.fdopen(f, "wb") as fh:
        fh.write(data)
    return True
