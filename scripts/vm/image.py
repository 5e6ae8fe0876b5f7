"""The VM image of the second test host: a Debian trixie disk built from Debian packages only.

debootstrap (minbase) into a folder, `apt-get install` of the runtimes in a chroot, the
project's Python dependencies in /opt/containersec-venv (the VM has no network), a unit
that runs the host's command after multi-user.target and docker.service, then
`mkfs.ext4 -d` into a sparse raw disk (no loop mount). The result lives under
STATE/images/<recipe hash>/ and is rebuilt only when the recipe changes: this file, the
package list, pyproject's dependencies. A failed build leaves no half image (everything
happens in a temporary folder that is renamed at the end) and names its step and log.

The chroot commands run in a private mount namespace (`unshare --mount`): /proc, /sys and
/dev are mounted there only, so nothing stays mounted on the host whatever happens.

The image's stores come filled: the project's own setup runs once in the chroot at native
speed (its parts 50, 55 and 85, in its own pid and network namespaces, so every daemon it
starts dies with it) and imports the probe images and this host's service-image tarballs
into Docker, rootful and rootless Podman, the docker-userns and docker-rootless daemons
and the nspawn cache; the same imports inside the VM under TCG took 5-8 minutes. The
setup inside the VM then finds them current (same stamps) and imports nothing.
"""

from __future__ import annotations

import ast
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path

SUITE = "trixie"
RECIPE_VERSION = "1"
DISK_SIZE = "12G"
MIN_FREE_BYTES = 10 * 1024**3  # rootfs (~2.5 GB) + disk image (~2.5 GB used) + margin
VENV = "/opt/containersec-venv"
CHECKOUT_IN_VM = "/root/src"
# Where the VM mounts the host's service-image tarballs (guest.py) and the store step binds
# them: the same path, so setup reads the same CONTAINERSEC_SERVICE_IMAGES in both.
SERVICE_IMAGES_IN_VM = "/mnt/service-images"
# The files of the checkout whose content decides what the store step puts in the image
STORE_FILES: tuple[str, ...] = (
    "scripts/setup",
    "scripts/setup.d/50-docker-daemons.sh",
    "scripts/setup.d/55-service-images.sh",
    "scripts/setup.d/85-gvisor.sh",
    "scripts/service-images",
)
# The store step: setup's parts 50 (docker-userns, docker-rootless), 55 (service images)
# and 85 (crun and runsc in dockerd's daemon.json) after its core (dockerd, Podman, the
# rootless user, the probe images). Then
# containerd.service's store, which the containerd runtime uses in the VM: the runtime's
# own import from Docker (ensure_image: docker save | ctr import, labelled with Docker's
# image id, so the VM finds them current) and the unpack its first `ctr run` would do
# (a mount and unmount of each image). Last, the daemons started by hand here (no
# systemd in a chroot) are stopped cleanly, so their stores are consistent, before the
# pid namespace ends and takes every other process with it.
STORES_SCRIPT = """\
set -eu
CONTAINERSEC_SETUP_PARTS="50 55 85" /root/src/scripts/setup
images=$(docker image ls --format '{{.Repository}}' 'containersec/*' | sort -u)
# without its CRI plugin, which wants a TCP listener (this network namespace has none up)
printf 'version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n' >/run/containerd-build.toml
containerd --config /run/containerd-build.toml >/run/containerd-build.log 2>&1 &
echo $! >/run/containerd-build.pid
for _ in $(seq 1 100); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done
if ! ctr version >/dev/null 2>&1; then  # else the runtime would start a containerd of its own
  tail -30 /run/containerd-build.log >&2; echo "containerd did not answer" >&2; exit 1
fi
cd /root/src
/opt/containersec-venv/bin/python -c '
import sys
from pytest_containersec.runtimes import get_runtime
rt = get_runtime("containerd")
for image in sys.argv[1:]:
    rt.ensure_image(image)
print("containerd: imported", *sys.argv[1:])
' $images
mkdir -p /run/containersec-mnt
for image in $images; do
  ctr -n containersec images mount "docker.io/$image:latest" /run/containersec-mnt >/dev/null
  ctr -n containersec images unmount --rm /run/containersec-mnt >/dev/null
done
stop() {  # stop PID (the daemon NAME) and wait until it is gone
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 1 300); do
    grep -qs '^State:[[:space:]]*[^Z]' "/proc/$1/status" || return 0
    sleep 0.1
  done
  echo "$2 did not stop within 30 s" >&2; exit 1
}
stop "$(cat /run/containerd-build.pid)" containerd
stop "$(cat /run/docker.pid)" dockerd
"""
ROOTLESS_USER = "containersec"

# Everything the project's setup installs (scripts/setup, setup.d) plus what a systemd
# host with AppArmor needs; chromium is not here (the browser test is host-tier only).
PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "systemd",
    "systemd-sysv",
    "dbus",
    "dbus-user-session",
    "libpam-systemd",
    "apparmor",
    "docker.io",
    "podman",
    "crun",
    "runc",
    "rootlesskit",
    "uidmap",
    "slirp4netns",
    "fuse-overlayfs",
    "catatonit",
    "iptables",
    "systemd-container",
    "busybox-static",
    "python3",
    "python3-venv",
    "kmod",
    "procps",
    "util-linux",
    "make",
    # the lxc and containerd runtimes (scripts/setup.d/80-engines.sh installs them on a host)
    "lxc",
    "containerd",
    # gVisor for the docker:/podman:/containerd:runsc variants (80-engines.sh, 85-gvisor.sh)
    "runsc",
    # the incus runtime (scripts/setup.d/90-incus.sh): the container-only daemon and its CLI
    "incus-base",
    "incus-client",
    # What an ordinary install gets as Recommends (apt's default) and the tiers need:
    # the docker CLI is its own package in trixie; containers-storage ships storage.conf.
    "docker-cli",
    "containers-storage",
    "passt",
    "aardvark-dns",
    "libnss-systemd",
    "linux-sysctl-defaults",
    "zstd",
)

# Units that only cost boot time in a VM without network that lives for one command.
MASKED_UNITS: tuple[str, ...] = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-timesyncd.service",
    "getty@tty1.service",
    # Incus's boot-time check starts the daemon for autostart instances (there are none);
    # its socket starts it on first use (measured: +16 s of boot under TCG otherwise)
    "incus-startup.service",
    # LXC's bridge and dnsmasq: the lxc runtime's containers have no network or the host's
    "lxc-net.service",
)

BOOT_UNIT = """\
[Unit]
Description=containersec: run the host's command, bring back its output, power off
After=multi-user.target docker.service
Wants=docker.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/containersec-vm-boot
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
"""

BOOT_TARGET = """\
[Unit]
Description=containersec: multi-user plus the host's command
Requires=multi-user.target containersec-vm.service
After=multi-user.target
AllowIsolate=yes
"""

# Mounts the two 9p shares, says "ready", runs scripts/vm/guest.py from the checkout (so
# changing the guest logic does not rebuild the image), records its status, powers off.
BOOT_SCRIPT = """\
#!/bin/sh
set -u
if grep -qw containersec.warmup /proc/cmdline; then  # the build's first boot: caches only
  echo "containersec-vm: warm-up boot done"; sync; systemctl poweroff --no-block; exit 0
fi
mkdir -p /mnt/src /mnt/results
opts=trans=virtio,version=9p2000.L,msize=524288
fail() { echo "containersec-vm: $*"; systemctl poweroff --no-block; exit 1; }
mount -t 9p -o "$opts,ro" src /mnt/src || fail "cannot mount the checkout share (src)"
mount -t 9p -o "$opts" results /mnt/results || fail "cannot mount the results share"
uptime=$(cut -d' ' -f1 /proc/uptime)
echo "ready $uptime" >/mnt/results/ready
python3 /mnt/src/scripts/vm/guest.py /mnt/results >>/mnt/results/output.log 2>&1 </dev/null
rc=$?
echo "$rc" >/mnt/results/status.tmp && mv /mnt/results/status.tmp /mnt/results/status
sync
systemctl poweroff --no-block
"""


class BuildError(Exception):
    """A build step failed: says which, and where its log is."""

    def __init__(self, step: str, detail: str, log: Path | None) -> None:
        self.step = step
        self.detail = detail
        self.log = log
        where = f"; log: {log}" if log else ""
        super().__init__(f"VM image build failed at step '{step}': {detail}{where}")


def python_requirements(pyproject: Path) -> list[str]:
    """The project's runtime and dev dependencies, plus hatchling for an offline `pip -e`."""
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    reqs = list(project.get("dependencies", []))
    reqs += list(project.get("optional-dependencies", {}).get("dev", []))
    reqs += list(data.get("build-system", {}).get("requires", []))
    reqs.append("editables")  # hatchling's editable install (pip -e) needs it
    return sorted(set(reqs))


def project_metadata(pyproject: Path) -> dict[str, object]:
    """What the editable install at build time records: name, version, entry points, ..."""
    data = tomllib.loads(pyproject.read_text())
    keep = (
        "name",
        "version",
        "requires-python",
        "dependencies",
        "optional-dependencies",
        "entry-points",
        "scripts",
    )
    meta = {k: v for k, v in data["project"].items() if k in keep}
    meta["build-system"] = data.get("build-system", {})
    meta["wheel"] = data.get("tool", {}).get("hatch", {}).get("build", {})
    return meta


# Top-level names of this file that do not change what is built (caching, locking,
# messages): editing them does not rebuild the image. Everything else does.
NOT_RECIPE = frozenset(
    {
        "NOT_RECIPE",
        "BuildError",
        "builder_ast",
        "recipe",
        "recipe_hash",
        "debian_mirror",
        "host_mirror",
        "check_free_space",
        "image_dir",
        "ensure_image",
        "_ensure_image",
    }
)


def _node_name(node: ast.stmt) -> str | None:
    if isinstance(node, ast.FunctionDef | ast.ClassDef):
        return node.name
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return node.target.id
    return None


def builder_ast(source: str | None = None) -> str:
    """The code that builds the image (its AST: formatting and comments do not count)."""
    tree = ast.parse(source if source is not None else Path(__file__).read_text())
    kept = [
        n
        for n in tree.body
        if not isinstance(n, ast.Import | ast.ImportFrom | ast.Expr | ast.If)
        and _node_name(n) not in NOT_RECIPE
    ]
    return "\n".join(ast.dump(n, annotate_fields=False) for n in kept)


def service_stamps(folder: Path | None) -> dict[str, str]:
    """The service images in folder (scripts/setup.d/55-service-images.sh's tarballs) and
    their recipe stamps: {name: stamp} of each tarball that has one."""
    if folder is None or not folder.is_dir():
        return {}
    return {
        tar.stem: stamp.read_text().strip()
        for tar in sorted(folder.glob("*.tar"))
        if (stamp := tar.with_suffix(".stamp")).is_file()
    }


def stores_recipe(checkout: Path, service_images: Path | None) -> dict[str, object]:
    """What the filled stores depend on: the setup files that fill them, the tarballs' stamps."""
    files = hashlib.sha256()
    for name in STORE_FILES:
        files.update(name.encode() + b"\0" + (checkout / name).read_bytes() + b"\0")
    return {"setup": files.hexdigest()[:16], "service": service_stamps(service_images)}


def recipe(pyproject: Path, service_images: Path | None = None) -> dict[str, object]:
    """Everything the image depends on; its hash names the image."""
    return {
        "stores": stores_recipe(pyproject.parent, service_images),
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "packages": list(PACKAGES),
        "masked": list(MASKED_UNITS),
        "python": python_requirements(pyproject),
        "project": project_metadata(pyproject),
        # The builder's code, not its formatting or comments: its AST.
        "builder": hashlib.sha256(builder_ast().encode()).hexdigest(),
    }


def recipe_hash(rec: dict[str, object]) -> str:
    """A short, stable hash of a recipe (key order does not matter)."""
    blob = json.dumps(rec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def debian_mirror(texts: Sequence[str]) -> str | None:
    """The Debian mirror apt already uses, from sources.list / deb822 .sources contents.

    Security and other archives are ignored: the first URI whose path ends in /debian.
    """
    for text in texts:
        for line in text.splitlines():
            line = line.strip()
            m = re.match(r"^URIs:\s*(.+)$", line)
            uris = m.group(1).split() if m else []
            if not m:
                parts = line.split()
                if parts and parts[0] == "deb":
                    uris = [p for p in parts[1:] if re.match(r"^(https?|file)://", p)][:1]
            for uri in uris:
                if re.match(r"^(https?|file)://\S+/debian/?$", uri):
                    return uri.rstrip("/")
    return None


def host_mirror() -> str:
    """CONTAINERSEC_DEBIAN_MIRROR or the mirror in this host's apt sources."""
    if env := os.environ.get("CONTAINERSEC_DEBIAN_MIRROR"):
        return env
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    texts = [f.read_text(errors="replace") for f in files if f.is_file()]
    mirror = debian_mirror(texts)
    if mirror is None:
        raise BuildError(
            "mirror",
            "no Debian mirror in /etc/apt/sources.list*; set CONTAINERSEC_DEBIAN_MIRROR",
            None,
        )
    return mirror


KEEP_OTHER_IMAGES = 1  # ~1.3 GB each


def check_free_space(folder: Path, need: int = MIN_FREE_BYTES) -> None:
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise BuildError(
            "disk space",
            f"{free / 1024**3:.1f} GiB free in {folder}, the build needs {need / 1024**3:.0f} GiB "
            "(free space there or set CONTAINERSEC_VM_STATE to another folder)",
            None,
        )


def chroot_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    env.update(extra or {})
    return env


class Builder:
    """One build into a temporary folder, logged to one file."""

    def __init__(
        self,
        state: Path,
        checkout: Path,
        log: Path,
        warmup: Callable[[Path], None] | None,
        service_images: Path | None = None,
    ) -> None:
        self.state = state
        self.checkout = checkout
        self.log = log
        self.warmup = warmup
        self.service_images = service_images

    def step(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        t0 = time.monotonic()
        print(f"vm build: {name} ...", flush=True)
        with self.log.open("a") as fh:
            fh.write(f"\n=== {name}: {' '.join(argv)}\n")
            fh.flush()
            proc = subprocess.Popen(
                list(argv),
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                rc = proc.wait()
            except BaseException:  # interrupted: no debootstrap/apt left writing
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise
        if rc != 0:
            tail = self.log.read_text(errors="replace").splitlines()[-15:]
            sys.stderr.write("\n".join(tail) + "\n")
            raise BuildError(name, f"exit status {rc}", self.log)
        print(f"vm build: {name} done in {time.monotonic() - t0:.0f} s", flush=True)

    def in_chroot(
        self,
        name: str,
        rootfs: Path,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        *,
        isolated: bool = False,
        binds: Sequence[tuple[Path, str]] = (),
    ) -> None:
        """argv inside rootfs, with /proc, /sys, /dev mounted in a private namespace.

        isolated: also in its own pid and network namespaces, with a tmpfs /run and cgroup2
        at /sys/fs/cgroup (daemons started there end with argv; no host interface or
        iptables rule is touched), rootfs made the namespace's root by pivot_root (rootless
        engines make user namespaces). binds: host folders mounted read-only inside."""
        envfile = rootfs / "tmp/.containersec-env.json"
        envfile.write_text(json.dumps(chroot_env(env)))
        ns = ["--pid", "--fork", "--net", "--kill-child"] if isolated else []
        extra = ["--isolated"] if isolated else []
        for src, dst in binds:
            extra += ["--bind", f"{src}:{dst}"]
        self.step(
            name,
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                *ns,
                "--",
                sys.executable,
                str(Path(__file__).resolve()),
                "_chroot",
                str(rootfs),
                *extra,
                "--",
                *argv,
            ],
        )

    def build(self, rec: dict[str, object], digest: str, out: Path) -> None:
        tmp = out.parent / f".build-{digest}-{os.getpid()}"
        rootfs = tmp / "rootfs"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            self._build(rec, tmp, rootfs)
            shutil.rmtree(rootfs)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _build(self, rec: dict[str, object], tmp: Path, rootfs: Path) -> None:
        mirror = host_mirror()
        self.step("debootstrap", ["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror])
        (rootfs / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
        (rootfs / "usr/sbin/policy-rc.d").chmod(0o755)
        shutil.copyfile("/etc/resolv.conf", rootfs / "etc/resolv.conf")
        (rootfs / "etc/apt/sources.list").write_text(f"deb {mirror} {SUITE} main\n")
        self.in_chroot("apt-get update", rootfs, ["apt-get", "update"])
        self.in_chroot(
            "apt-get install",
            rootfs,
            ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
        )
        self._venv(rec, rootfs)
        self._configure(rootfs)
        self._stores(rootfs)
        self._kernel(rootfs, tmp)
        self.step(
            "mkfs.ext4",
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "containersec",
                "-d",
                str(rootfs),
                str(tmp / "disk.img"),
                DISK_SIZE,
            ],
        )
        if self.warmup is not None:
            # One boot of the new disk (no snapshot): apparmor's profile cache, the hwdb,
            # machine-id, docker's and containerd's first start are written once, here,
            # instead of at every run (AppArmor alone takes ~100 s under TCG).
            t0 = time.monotonic()
            print("vm build: warm-up boot ...", flush=True)
            self.warmup(tmp)
            print(f"vm build: warm-up boot done in {time.monotonic() - t0:.0f} s", flush=True)
        (tmp / "recipe.json").write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")

    def _venv(self, rec: dict[str, object], rootfs: Path) -> None:
        ca = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
        pip_env = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "180"}
        if ca.is_file():  # this host's CA bundle (it may add a proxy's CA)
            shutil.copyfile(ca, rootfs / "tmp/host-ca.crt")
            pip_env["PIP_CERT"] = "/tmp/host-ca.crt"
        self.in_chroot("python venv", rootfs, ["python3", "-m", "venv", VENV])
        reqs = [str(r) for r in rec["python"]]  # type: ignore[attr-defined]
        self.in_chroot("pip install", rootfs, [f"{VENV}/bin/pip", "install", "-q", *reqs], pip_env)
        (rootfs / "tmp/host-ca.crt").unlink(missing_ok=True)
        # The package itself, editable from /root/src, where the VM copies the checkout at
        # each run: its entry points (pytest11, the CLI) are registered here, offline.
        src = rootfs / CHECKOUT_IN_VM.lstrip("/")
        src.mkdir(parents=True)
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(self.checkout / name, src / name)
        shutil.copytree(
            self.checkout / "pytest_containersec",
            src / "pytest_containersec",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        self.in_chroot(
            "pip install -e",
            rootfs,
            [
                f"{VENV}/bin/pip",
                "install",
                "-q",
                "--no-deps",
                "--no-index",
                "--no-build-isolation",
                "-e",
                CHECKOUT_IN_VM,
            ],
        )
        shutil.rmtree(src)

    def _stores(self, rootfs: Path) -> None:
        """Fill the image's stores with the project's own setup (module docstring)."""
        src = rootfs / CHECKOUT_IN_VM.lstrip("/")
        src.mkdir(parents=True)
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(self.checkout / name, src / name)
        for folder in ("scripts", "pytest_containersec"):
            shutil.copytree(
                self.checkout / folder,
                src / folder,
                ignore=shutil.ignore_patterns("__pycache__"),
            )
        (src / ".venv").symlink_to(VENV)
        marker = rootfs / VENV.lstrip("/") / ".containersec-installed"
        marker.touch()  # setup: the venv is current (pip install -e happened above)
        env = {"CONTAINERSEC_VM": "1", "CONTAINERSEC_VENV": VENV}
        binds: list[tuple[Path, str]] = []
        if service_stamps(self.service_images):
            assert self.service_images is not None
            binds.append((self.service_images, SERVICE_IMAGES_IN_VM))
            env["CONTAINERSEC_SERVICE_IMAGES"] = SERVICE_IMAGES_IN_VM
        try:
            self.in_chroot(
                "fill the stores (setup)",
                rootfs,
                ["/bin/bash", "-c", STORES_SCRIPT],
                env,
                isolated=True,
                binds=binds,
            )
        finally:
            shutil.rmtree(src)
            marker.unlink(missing_ok=True)

    def _configure(self, rootfs: Path) -> None:
        sysd = rootfs / "etc/systemd/system"
        (sysd / "containersec-vm.service").write_text(BOOT_UNIT)
        (sysd / "containersec.target").write_text(BOOT_TARGET)
        (sysd / "default.target").unlink(missing_ok=True)
        (sysd / "default.target").symlink_to("/etc/systemd/system/containersec.target")
        for unit in MASKED_UNITS:
            (sysd / unit).unlink(missing_ok=True)
            (sysd / unit).symlink_to("/dev/null")
        boot = rootfs / "usr/local/sbin/containersec-vm-boot"
        boot.write_text(BOOT_SCRIPT)
        boot.chmod(0o755)
        (rootfs / "etc/modules-load.d/containersec-9p.conf").write_text("9p\n9pnet_virtio\n")
        # lxc-net is masked (above): without this, lxc.service's autostart waits 30 s for
        # its bridge at every boot, the last unit before multi-user.target (measured)
        (rootfs / "etc/default/lxc-net").write_text('USE_LXC_BRIDGE="false"\n')
        (rootfs / "etc/hostname").write_text("containersec-vm\n")
        (rootfs / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 containersec-vm\n")
        (rootfs / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
        jd = rootfs / "etc/systemd/journald.conf.d"
        jd.mkdir(parents=True, exist_ok=True)
        (jd / "containersec.conf").write_text("[Journal]\nStorage=volatile\n")
        (rootfs / "etc/machine-id").write_text("")
        (rootfs / "etc/resolv.conf").write_text("")
        (rootfs / "usr/sbin/policy-rc.d").unlink()
        # The venv's marker that scripts/setup checks; the package itself comes from the
        # shared checkout at run time (guest.py: pip install --no-deps --no-index -e).
        (rootfs / VENV.lstrip("/") / ".containersec-image").write_text(RECIPE_VERSION + "\n")
        disable_absent_apparmor_profiles(rootfs)
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / junk).glob("*"):
                if p.is_file():
                    p.unlink()

    def _kernel(self, rootfs: Path, tmp: Path) -> None:
        kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
        initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise BuildError("kernel", f"no vmlinuz/initrd.img in {rootfs}/boot", self.log)
        shutil.copyfile(kernels[-1], tmp / "vmlinuz")
        shutil.copyfile(initrds[-1], tmp / "initrd.img")
        (tmp / "kernel-version").write_text(kernels[-1].name.removeprefix("vmlinuz-") + "\n")


def profile_attachment(text: str) -> str | None:
    """The program path an AppArmor profile file attaches to (its first profile), if any."""
    for line in text.splitlines():
        m = re.match(r"^\s*profile\s+\S+\s+(/\S+)", line) or re.match(
            r"^\s*(/[^\s{]+)\s+(flags=|\{)", line
        )
        if m:
            return m.group(1).strip('"')
    return None


def disable_absent_apparmor_profiles(rootfs: Path) -> list[str]:
    """Disable (apparmor.d/disable/ links) the profiles of programs the image lacks.

    trixie ships ~100 profiles for desktop programs (browsers, chat apps) that only grant
    them user namespaces; loading them costs ~40 s per boot under TCG and changes nothing
    for a program that is not installed. Profiles with glob attachments stay.
    """
    aa = rootfs / "etc/apparmor.d"
    disabled = []
    (aa / "disable").mkdir(exist_ok=True)
    for f in sorted(aa.iterdir()):
        if not f.is_file():
            continue
        path = profile_attachment(f.read_text(errors="replace"))
        if path is None or any(c in path for c in "*?[{@"):
            continue
        if (
            not (rootfs / path.lstrip("/")).exists()
            and not (rootfs / path.lstrip("/")).is_symlink()
        ):
            link = aa / "disable" / f.name
            if not link.exists():
                link.symlink_to(f"/etc/apparmor.d/{f.name}")
            disabled.append(f.name)
    return disabled


def chroot_main(argv: list[str]) -> int:
    """`_chroot ROOTFS -- CMD...`: run inside `unshare --mount --propagation private`."""
    rootfs = Path(argv[0])
    opts = argv[1 : argv.index("--")]
    cmd = argv[argv.index("--") + 1 :]
    # isolated: the rootfs a mount point of its own, so that / inside is one (dockerd's
    # layer extraction makes / rprivate in its own namespace; a plain folder is EINVAL)
    mounts = [["mount", "--bind", str(rootfs), str(rootfs)]] if "--isolated" in opts else []
    mounts += [
        ["mount", "-t", "proc", "proc", str(rootfs / "proc")],
        ["mount", "-t", "sysfs", "-o", "ro", "sysfs", str(rootfs / "sys")],
        ["mount", "--rbind", "/dev", str(rootfs / "dev")],
    ]
    if "--isolated" in opts:
        mounts += [
            ["mount", "-t", "cgroup2", "cgroup2", str(rootfs / "sys/fs/cgroup")],
            ["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", str(rootfs / "run")],
        ]
    for i, opt in enumerate(opts):
        if opt == "--bind":
            src, dst = opts[i + 1].split(":", 1)
            target = rootfs / dst.lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            mounts += [
                ["mount", "--bind", src, str(target)],
                ["mount", "-o", "remount,bind,ro", str(target)],
            ]
    for m in mounts:
        subprocess.run(m, check=True)
    env = json.loads((rootfs / "tmp/.containersec-env.json").read_text())
    if "--isolated" in opts:
        pivot_into(rootfs)
    else:
        os.chroot(rootfs)
    os.chdir("/")
    os.execvpe(cmd[0], cmd, env)  # noqa: S606 (argv, no shell)


SYS_PIVOT_ROOT = 155  # x86_64
MNT_DETACH = 2


def pivot_into(rootfs: Path) -> None:
    """Make rootfs (a mount point) this mount namespace's root: pivot_root(".", ".") and a
    lazy unmount of the old root stacked on it (runc's way). Unlike a chroot, a user
    namespace can be made there (the kernel refuses one to a chrooted process), which
    rootless Podman and rootlesskit need."""
    libc = ctypes.CDLL(None, use_errno=True)
    os.chdir(rootfs)
    if libc.syscall(SYS_PIVOT_ROOT, b".", b".") != 0:
        raise OSError(ctypes.get_errno(), "pivot_root")
    if libc.umount2(b".", MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), "umount2 of the old root")


def image_dir(state: Path, digest: str) -> Path:
    return state / "images" / digest


def ensure_image(
    state: Path,
    checkout: Path,
    force: bool = False,
    warmup: Callable[[Path], None] | None = None,
    service_images: Path | None = None,
) -> Path:
    """The cached image for the current recipe, building it first if needed; its stores hold
    the service images of the tarballs in service_images (their stamps are in the recipe).

    One build at a time: a second caller waits for the first one's image (flock).
    """
    state.mkdir(parents=True, exist_ok=True)
    with (state / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _ensure_image(state, checkout, force, warmup, service_images)


def _ensure_image(
    state: Path,
    checkout: Path,
    force: bool,
    warmup: Callable[[Path], None] | None,
    service_images: Path | None,
) -> Path:
    rec = recipe(checkout / "pyproject.toml", service_images)
    digest = recipe_hash(rec)
    out = image_dir(state, digest)
    if not force and (out / "disk.img").is_file() and (out / "recipe.json").is_file():
        print(f"vm build: image {digest} is up to date ({out})", flush=True)
        os.utime(out)  # recently used: a build for another recipe keeps it
        return out
    if os.geteuid() != 0:
        raise BuildError("preflight", "run as root (debootstrap and chroot need it)", None)
    for tool, pkg in (
        ("debootstrap", "debootstrap"),
        ("mkfs.ext4", "e2fsprogs"),
        ("unshare", "util-linux"),
    ):
        if shutil.which(tool) is None:
            raise BuildError("preflight", f"{tool} is missing (fix: apt-get install {pkg})", None)
    (state / "images").mkdir(parents=True, exist_ok=True)
    for stale in (state / "images").glob(".build-*"):  # a killed build's leftovers
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            shutil.rmtree(stale, ignore_errors=True)
    check_free_space(state / "images")
    log = state / "build.log"
    log.write_text(f"build of image {digest} at {time.ctime()}\n")
    t0 = time.monotonic()
    print(f"vm build: building image {digest} (log: {log})", flush=True)
    Builder(state, checkout, log, warmup, service_images).build(rec, digest, out)
    # Keep the new image and the most recently used other one (two checkouts on different
    # recipes, e.g. branches, then do not rebuild each other's image on every run).
    others = sorted(
        (p for p in (state / "images").iterdir() if p.name != digest and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime, reverse=True,
    )  # fmt: skip
    for old in others[KEEP_OTHER_IMAGES:]:
        shutil.rmtree(old, ignore_errors=True)
    print(f"vm build: image {digest} built in {time.monotonic() - t0:.0f} s ({out})", flush=True)
    return out


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "_chroot":
    sys.exit(chroot_main(sys.argv[2:]))
