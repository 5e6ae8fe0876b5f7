"""Root filesystems for nspawn: a cache exported once from Docker or Podman, private copies.

``$STATE/images/<cache_key(image)>/rootfs`` is shared and never modified once published
(export into a temporary directory, then one ``rename``). The entry records the store and
image id it was exported from (``image-id``); before each use the id is compared with the
store's, and an image rebuilt under the same name is exported again (entries the setup
writes, with a ``stamp``, are the setup's to renew). Each container gets
``cp -a --reflink=auto`` of it: measured here (ext4, no reflink) 12 ms for the 2 MB probe,
and an overlayfs mount cannot be used with ``--private-users-ownership=map`` (nspawn 252:
"ID mapped mounts are apparently not available"), while ``chown`` ownership would copy up
every file anyway. Files the container needs but the image lacks (etc/os-release, usr/,
bind-mount and API filesystem mount points) are added to the copy only.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ...errors import ImageNotFound
from ...linux import session
from ...spec import ContainerSpec

EXPORT_TIMEOUT = 300
LOOKUP_TIMEOUT = 8
OS_RELEASE = b'ID=containersec-image\nNAME="image exported by pytest-containersec"\n'
MOUNT_POINTS = ("usr", "dev", "proc", "sys", "run", "tmp", "var/tmp")
# Owners, modes (setuid/setgid) and file capabilities (the security.capability xattr,
# which docker and podman export as a PAX record) as in the image: without --xattrs a
# `setcap`'d binary lost its capability in the copy, and no_file_capabilities passed.
TAR_X = ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=security.capability",
         "-xpf", "-", "-C"]  # fmt: skip


def cache_key(image: str) -> str:
    """The cache entry's folder name: the image name with ``/`` and ``:`` as ``_``, plus
    ``+`` and a hash of the exact name when that spelling could be another name's (the name
    has ``_`` or ``:``; ``+`` is never part of an image reference)."""
    key = image.replace("/", "_").replace(":", "_")
    if "_" in image or ":" in image:
        key += "+" + hashlib.sha256(image.encode()).hexdigest()[:12]
    return key


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool = True) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def _lock_file(cache: Path) -> Path:
    """One lock per entry: exports and swaps hold it exclusively, copies shared."""
    return cache.parent / f".{cache.name}.lock"


def rootfs(image: str, state: Path, runtime: str) -> tuple[Path, dict[str, str]]:
    """The cached rootfs of ``image`` (exported now if missing, or if the store's image
    of that name is no longer the one exported) and its image env."""
    images = state / "images"
    final = images / cache_key(image)
    if not (final / "rootfs").is_dir() or _stale(final, image):
        images.mkdir(parents=True, exist_ok=True)
        with _locked(_lock_file(final)):
            if not (final / "rootfs").is_dir() or _stale(final, image):
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=images))
                try:
                    _export(image, tmp, runtime)
                    if final.exists():  # stale, or half-made by another version
                        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=images))
                        os.rename(final, old / "entry")
                        shutil.rmtree(old, ignore_errors=True)
                    os.rename(tmp, final)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
    config = image_config(image, state) or {}
    env = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)
    return final / "rootfs", env


def image_config(image: str, state: Path) -> dict[str, Any] | None:
    """The cached image's config (docker/podman inspect's ``Config``), if recorded."""
    try:
        config = json.loads((state / "images" / cache_key(image) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def image_user(image: str, state: Path) -> str | None:
    """The cached image config's USER ("" when it sets none); None without a config."""
    config = image_config(image, state)
    return None if config is None else str(config.get("User") or "")


def with_image_config(spec: ContainerSpec, config: dict[str, Any]) -> ContainerSpec:
    """``spec`` as docker runs it on this image (pure): the image's USER when the spec
    names none, and its ENTRYPOINT in front of a given command (a given command replaces
    CMD; without one the idle sleep runs, as on every runtime). The runtimes that run
    this cache's rootfs (nspawn, lxc, Incus) or its image (containerd) start this."""
    changes: dict[str, Any] = {}
    user = config.get("User")
    if spec.user is None and isinstance(user, str) and user:
        changes["user"] = user
    entry = config.get("Entrypoint")
    if spec.command and isinstance(entry, list) and all(isinstance(a, str) for a in entry):
        changes["command"] = (*entry, *spec.command)
    return spec.replace(**changes) if changes else spec


def _stale(entry: Path, image: str) -> bool:
    """Whether the store now has another image under ``image``'s name than the one the
    entry was exported from. An entry the setup wrote (``stamp``) is the setup's; one
    without a recorded id (an older version's) is checked against both stores."""
    try:
        recorded: str | None = (entry / "image-id").read_text().strip()
    except OSError:
        if (entry / "stamp").exists():
            return False
        recorded = None
    if recorded is not None and not _current_format(entry):
        return True  # exported by an older version (without the file capabilities)
    store = recorded.partition(":")[0] if recorded else None
    current = _store_id(image, store)
    return current is not None and current != recorded


# What an export writes besides the rootfs, as ``format``: an entry of another format is
# exported again. 2: the security.capability xattrs kept (TAR_X).
EXPORT_FORMAT = "2"


def _current_format(entry: Path) -> bool:
    try:
        return (entry / "format").read_text().strip() == EXPORT_FORMAT
    except OSError:
        return False


def _store_id(image: str, store: str | None) -> str | None:
    """``docker:<id>`` or ``podman:<id>`` of ``image`` in the store it is exported from
    (``store``, or Docker then Podman); None when that store does not have it or does
    not answer."""
    if store in (None, "docker"):
        found = _docker_id(image)
        if found is not None or store == "docker":
            return found
    if shutil.which("podman") is None:
        return None
    try:
        r = _podman("image", "inspect", "--format", "{{.Id}}", image)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return f"podman:{r.stdout.strip()}" if r.returncode == 0 and r.stdout.strip() else None


@contextlib.contextmanager
def _docker() -> Iterator[Any]:
    """A client of the local Docker daemon (``docker.DockerClient``, closed afterwards), or
    None when the SDK is missing or no daemon answers. Imported here: only an export or an
    id lookup pays for the SDK."""
    try:
        import docker
        import docker.errors
    except ImportError:
        yield None
        return
    url = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    try:
        client = docker.DockerClient(base_url=url, timeout=LOOKUP_TIMEOUT)
    except docker.errors.DockerException:
        yield None
        return
    try:
        yield client
    finally:
        client.close()


def _docker_id(image: str) -> str | None:
    with _docker() as client:
        if client is None:
            return None
        import docker.errors  # the SDK is there: _docker() made a client

        try:
            return f"docker:{client.images.get(image).id}"
        except (docker.errors.DockerException, OSError, KeyError):
            return None


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
    with _docker() as client:
        if client is None:
            return False
        import docker.errors  # the SDK is there: _docker() made a client

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
        (dest / "image-id").write_text(f"docker:{img.id}")
        (dest / "format").write_text(EXPORT_FORMAT + "\n")
        return True


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
            found = json.loads(inspect.stdout)[0]
            (dest / "config.json").write_text(json.dumps(found["Config"]))
            (dest / "image-id").write_text(f"podman:{found['Id']}")
            (dest / "format").write_text(EXPORT_FORMAT + "\n")
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


def prepare_copy(cache: Path, dest: Path, meanwhile: Callable[[], object] = lambda: None) -> None:
    """Private copy of the cached rootfs that nspawn accepts as an OS tree (never of an
    entry being replaced: the swap waits for the copies). ``meanwhile`` runs while ``cp``
    copies (e.g. the probe copy: under TCG each costs ~0.15 s, on two CPUs at once); the
    copy is complete when this returns, whether ``meanwhile`` raised or not."""
    argv = ["cp", "-a", "--reflink=auto", str(cache), str(dest)]
    with _locked(_lock_file(cache.parent), exclusive=False):
        cp = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        try:
            meanwhile()
        finally:
            if cp.wait():
                raise subprocess.CalledProcessError(cp.returncode, argv)
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
