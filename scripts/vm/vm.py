#!/usr/bin/env python3
"""The second test host: a Debian trixie VM under qemu.

    scripts/vm/vm.py setup                install qemu-system-x86, debootstrap if missing
    scripts/vm/vm.py build [--force]      build the image (cached by its recipe hash)
    scripts/vm/vm.py run [opts] -- CMD..  boot it, run CMD as root in a copy of the checkout
    scripts/vm/vm.py test                 build if needed, then setup + the VM tier inside
    scripts/vm/vm.py record               setup, then record /proc and cgroup files of one
                                          container per runtime into tests/data/vm/

The VM boots the image's own kernel and initrd with `-snapshot` (the image stays clean)
and `-nic none`; the checkout is shared read-only over 9p, results over a writable 9p
share. The command's output is streamed to stdout while it runs; its exit status is this
script's. qemu never outlives this process (PR_SET_PDEATHSIG, and a kill on
SIGINT/SIGTERM/SIGHUP); this process itself gets SIGTERM when its parent dies.
Logs of each run: STATE/runs/<id>/ (console.log, output.log, qemu.log); STATE is
/var/lib/containersec/vm (CONTAINERSEC_VM_STATE).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import image

CHECKOUT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("CONTAINERSEC_VM_STATE", "/var/lib/containersec/vm"))
# The service images (scripts/setup.d/55-service-images.sh): the VM has no mirror to build
# them, so this host builds their tarballs (as its own setup does, into the same folder) and
# the image build imports them into every store of the image at native speed (image.py;
# importing them inside under TCG took 5-8 min, more than the tier's budget leaves). The
# folder is also shared read-only, so a VM whose image is older imports what changed.
# CONTAINERSEC_SERVICE_IMAGES names another folder (then used as it is, never built into).
SERVICE_IMAGES_DEFAULT = Path("/var/lib/containersec/images/service")
SERVICE_IMAGES = Path(os.environ.get("CONTAINERSEC_SERVICE_IMAGES", SERVICE_IMAGES_DEFAULT))
SERVICE_TOOL = Path(__file__).resolve().parents[1] / "service-images"


def service_images_share() -> Path | None:
    """The tarballs' folder, when this host has it (test_workload.py uses the images)."""
    return SERVICE_IMAGES if SERVICE_IMAGES.is_dir() else None


def ensure_service_images() -> None:
    """Build the service-image tarballs the default folder lacks or has of another recipe."""
    if SERVICE_IMAGES != SERVICE_IMAGES_DEFAULT:
        return
    tool = str(SERVICE_TOOL)
    stamp = subprocess.run([tool, "stamp"], check=True, capture_output=True, text=True).stdout
    names = subprocess.run([tool, "names"], check=True, capture_output=True, text=True).stdout
    for name in names.split():
        have = SERVICE_IMAGES / f"{name}.stamp"
        tar = SERVICE_IMAGES / f"{name}.tar"
        if tar.is_file() and have.is_file() and have.read_text().strip() == stamp.strip():
            continue
        SERVICE_IMAGES.mkdir(parents=True, exist_ok=True)
        log = STATE / "service-images.log"
        print(f"vm setup: building the service image {name} (log: {log})", flush=True)
        with log.open("a") as fh:
            rc = subprocess.call([tool, "build", name, str(SERVICE_IMAGES)], stdout=fh,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)  # fmt: skip
        if rc != 0:
            raise VMError(f"setup: building the service image {name} failed; log: {log}\n"
                          + tail(log, 15))  # fmt: skip


PR_SET_PDEATHSIG = 1
KEEP_RUNS = 6
QEMU = "qemu-system-x86_64"


class VMError(Exception):
    """A step of a VM run failed; the message names the step and the log."""


class BootPanic(VMError):
    """The guest kernel panicked before the VM was ready (worth another boot)."""


# QEMU 7.2's multi-threaded TCG sometimes runs a stale int3 of the kernel's text patching
# (Oops: int3 ... Kernel panic) in the first seconds of a boot: boot again, at most this often.
BOOT_ATTEMPTS = 3


@dataclass(frozen=True)
class VMConfig:
    image: Path
    src: Path
    results: Path
    accel: str  # "kvm" or "tcg"
    service_images: Path | None = None  # shared read-only as "service" when it exists
    cpus: int = 2
    memory_mb: int = 4096


def kernel_cmdline(warmup: bool = False) -> str:
    line = "root=/dev/vda rw console=ttyS0 panic=-1 systemd.show_status=1 loglevel=4"
    return line + " containersec.warmup" if warmup else line


def qemu_argv(cfg: VMConfig, warmup: bool = False) -> list[str]:
    """The qemu command line: no network, no display, one disk in snapshot mode, two shares.

    warmup: the build's first boot, which writes to the disk and has no shares.
    """
    accel = (
        ["-accel", "kvm", "-cpu", "host"]
        if cfg.accel == "kvm"
        else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    )
    argv = [
        QEMU,
        *accel,
        "-machine",
        "q35",
        "-smp",
        str(cfg.cpus),
        "-m",
        str(cfg.memory_mb),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
        "-nic",
        "none",
        "-no-reboot",
        "-serial",
        f"file:{cfg.results / 'console.log'}",
        "-kernel",
        str(cfg.image / "vmlinuz"),
        "-initrd",
        str(cfg.image / "initrd.img"),
        "-append",
        kernel_cmdline(warmup),
        "-drive",
        f"file={cfg.image / 'disk.img'},format=raw,if=virtio,cache=unsafe",
    ]
    if warmup:
        return argv
    return [
        *argv,
        "-snapshot",
        "-virtfs",
        f"local,path={cfg.src},mount_tag=src,security_model=none,readonly=on",
        "-virtfs",
        f"local,path={cfg.results},mount_tag=results,security_model=none",
        *(
            ["-virtfs", f"local,path={si},mount_tag=service,security_model=none,readonly=on"]
            if (si := cfg.service_images) is not None and si.is_dir()
            else []
        ),
    ]


def set_pdeathsig(sig: int) -> None:
    """prctl(PR_SET_PDEATHSIG, sig): the kernel sends sig when our parent dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def _qemu_preexec() -> None:
    set_pdeathsig(signal.SIGKILL)


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signum)


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def new_run_dir(state: Path) -> Path:
    runs = state / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    old = sorted(p for p in runs.iterdir() if p.is_dir() and not p.is_symlink())
    for p in old[: max(0, len(old) - KEEP_RUNS + 1)]:
        shutil.rmtree(p, ignore_errors=True)
    run = runs / time.strftime(f"%Y%m%d-%H%M%S-{os.getpid()}")
    run.mkdir()
    latest = runs / "latest"
    latest.unlink(missing_ok=True)
    latest.symlink_to(run.name)
    return run


def tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} is missing)"


class Run:
    """One boot: start qemu, wait for ready, stream output, wait for the status."""

    def __init__(self, cfg: VMConfig, boot_timeout: float, cmd_timeout: float) -> None:
        self.cfg = cfg
        self.boot_timeout = boot_timeout
        self.cmd_timeout = cmd_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.offset = 0

    @property
    def qemu_log(self) -> Path:
        return self.cfg.results / "qemu.log"

    @property
    def console(self) -> Path:
        return self.cfg.results / "console.log"

    def start(self) -> None:
        argv = qemu_argv(self.cfg)
        (self.cfg.results / "qemu-argv.json").write_text(json.dumps(argv, indent=1) + "\n")
        log = (self.cfg.results / "qemu.log").open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_qemu_preexec,
            start_new_session=True,
        )
        log.close()

    def stop(self) -> None:
        """qemu gone, whatever state it is in (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stream(self) -> None:
        out = self.cfg.results / "output.log"
        try:
            with out.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            sys.stdout.buffer.write(data)
            sys.stdout.flush()

    def wait_ready(self) -> float:
        assert self.proc is not None
        t0 = time.monotonic()
        ready = self.cfg.results / "ready"
        while not ready.exists():
            if self.proc.poll() is not None:
                if "Kernel panic" in tail(self.console, 200):
                    raise BootPanic(f"boot: the guest kernel panicked; log: {self.console}")
                raise VMError(
                    f"boot: qemu exited with status {self.proc.returncode} before the VM was "
                    f"ready; logs: {self.console}, {self.cfg.results / 'qemu.log'}\n"
                    + tail(self.cfg.results / "qemu.log", 10)
                    + "\n"
                    + tail(self.console)
                )
            if self.cfg.accel == "kvm" and "KVM internal error" in tail(self.qemu_log, 5):
                raise VMError(f"boot: KVM internal error; log: {self.qemu_log}")
            if time.monotonic() - t0 > self.boot_timeout:
                raise VMError(
                    f"boot: VM did not boot within {self.boot_timeout:.0f} s "
                    f"({self.cfg.accel}); log: {self.console}"
                )
            time.sleep(0.2)
        return time.monotonic() - t0

    def wait_status(self) -> int:
        assert self.proc is not None
        t0 = time.monotonic()
        status = self.cfg.results / "status"
        # The guest enforces cmd_timeout itself (exit 124); this is the host's backstop.
        limit = self.cmd_timeout + 120
        while not status.exists():
            self.stream()
            if self.proc.poll() is not None:
                self.stream()
                raise VMError(
                    f"command: qemu exited with status {self.proc.returncode} before the command "
                    f"finished; logs: {self.console}, {self.cfg.results / 'output.log'}\n"
                    + tail(self.console)
                )
            if time.monotonic() - t0 > limit:
                self.stream()
                raise VMError(
                    f"command: no exit status within {limit:.0f} s (the VM hangs); "
                    f"logs: {self.cfg.results / 'output.log'}, {self.console}"
                )
            time.sleep(0.3)
        self.stream()
        rc = int(status.read_text().strip() or "1")
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            print(
                f"vm: the VM did not power off within 90 s; killed (log: {self.console})",
                file=sys.stderr,
            )
        return rc


def warmup_boot(disk_dir: Path, timeout: float = 900.0) -> None:
    """The build's first boot of a new disk under TCG: boot to multi-user, power off."""
    for attempt in range(BOOT_ATTEMPTS):
        try:
            _warmup_once(disk_dir, timeout)
            return
        except BootPanic:
            if attempt + 1 == BOOT_ATTEMPTS:
                raise image.BuildError(
                    "warm-up boot", "the guest kernel panicked", STATE / "build-console.log"
                ) from None
            print("vm build: the guest kernel panicked in the warm-up boot; booting again")


def _warmup_once(disk_dir: Path, timeout: float) -> None:
    console = STATE / "build-console.log"
    cfg = VMConfig(image=disk_dir, src=CHECKOUT, results=disk_dir, accel="tcg")
    argv = qemu_argv(cfg, warmup=True)
    qlog = (STATE / "build-qemu.log").open("wb")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=qlog,
        stderr=subprocess.STDOUT,
        preexec_fn=_qemu_preexec,
        start_new_session=True,
    )
    qlog.close()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.move(disk_dir / "console.log", console)
    text = console.read_text(errors="replace")
    done = "warm-up boot done" in text
    if not done and "Kernel panic" in text:
        raise BootPanic("warm-up boot: the guest kernel panicked")
    if rc is None or rc != 0 or not done:
        why = "did not power off in time" if rc is None else f"qemu exit status {rc}"
        raise image.BuildError(
            "warm-up boot", f"{why}; console log: {console}", STATE / "build-qemu.log"
        )


def run_in_vm(
    img: Path,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    accel: str,
    boot_timeout: float,
    cmd_timeout: float,
) -> int:
    """Boot img, run argv inside, return its exit status (VMError on infrastructure failure)."""
    if shutil.which(QEMU) is None:
        raise VMError(f"preflight: {QEMU} is missing (fix: apt-get install qemu-system-x86)")
    for f in ("vmlinuz", "initrd.img", "disk.img"):
        if not (img / f).is_file():
            raise VMError(f"preflight: {img / f} is missing (fix: scripts/vm/vm.py build --force)")
    kvm_marker = STATE / "kvm-failed"
    accels = [accel]
    if accel == "auto":
        accels = ["kvm", "tcg"] if kvm_usable() and not kvm_marker.exists() else ["tcg"]
    attempts = [*accels[:-1], *[accels[-1]] * BOOT_ATTEMPTS]
    for i, acc in enumerate(attempts):
        last = i + 1 == len(attempts)
        results = new_run_dir(STATE)
        (results / "command.json").write_text(
            json.dumps({"argv": list(argv), "env": env, "timeout": cmd_timeout}) + "\n"
        )
        pack_checkout(CHECKOUT, results / CHECKOUT_TAR)
        cfg = VMConfig(image=img, src=CHECKOUT, results=results, accel=acc,
                       service_images=service_images_share())  # fmt: skip
        # A bounded check for KVM: a working KVM boots in well under a minute.
        run = Run(cfg, boot_timeout=60 if acc == "kvm" else boot_timeout, cmd_timeout=cmd_timeout)
        print(f"vm: booting {img.name} with {acc.upper()} (logs: {results})", flush=True)
        t0 = time.monotonic()
        try:
            run.start()
            try:
                took = run.wait_ready()
            except BootPanic as e:
                if last:
                    raise
                print(f"vm: {e}; booting again", flush=True)
                continue
            except VMError as e:
                if acc == "kvm" and not last:
                    print(f"vm: KVM did not work ({e}); falling back to TCG", flush=True)
                    kvm_marker.write_text(f"{time.ctime()}: {e}\n")
                    continue
                raise
            print(f"vm: ready after {took:.0f} s ({acc.upper()}); running {list(argv)}", flush=True)
            rc = run.wait_status()
            print(
                f"vm: exit status {rc}; VM run took {time.monotonic() - t0:.0f} s "
                f"({acc.upper()}); logs: {results}",
                flush=True,
            )
            return rc
        finally:
            run.stop()
            (results / CHECKOUT_TAR).unlink(missing_ok=True)
    raise AssertionError("unreachable")


# The checkout goes in as one tar file: copying its ~1400 files one by one over 9p took
# ~70 s under TCG, extracting the tar inside a few seconds. guest.py falls back to the
# 9p copy when the file is missing. What is left out matches guest.IGNORE.
CHECKOUT_TAR = "checkout.tar"
_SKIP = {".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
         ".hypothesis", "reports", ".import_linter_cache"}  # fmt: skip


def pack_checkout(src: Path, dest: Path) -> None:
    """Write ``src`` (minus caches, venv, git and reports) as an uncompressed tar."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        if any(p in _SKIP or p.endswith(".egg-info") for p in parts):
            return None
        return info

    with tarfile.open(dest, "w") as tar:
        tar.add(src, arcname=".", filter=keep)


HOST_TOOLS: tuple[tuple[str, str], ...] = (
    (QEMU, "qemu-system-x86"),
    ("debootstrap", "debootstrap"),
    ("mkfs.ext4", "e2fsprogs"),
    ("unshare", "util-linux"),
    ("setcap", "libcap2-bin"),  # the service images' file capability (scripts/service-images)
)


def missing_host_packages() -> list[str]:
    return [pkg for tool, pkg in HOST_TOOLS if shutil.which(tool) is None]


def host_setup() -> None:
    """Install what the VM tier needs on this host (idempotent; the host tier needs none)."""
    missing = missing_host_packages()
    if not missing:
        print("vm setup: qemu, debootstrap, e2fsprogs, libcap2-bin: installed", flush=True)
        return
    if os.geteuid() != 0:
        raise VMError(
            f"setup: {', '.join(missing)} missing; run as root "
            f"(fix: apt-get install {' '.join(missing)})"
        )
    STATE.mkdir(parents=True, exist_ok=True)
    log = STATE / "apt-host.log"
    print(f"vm setup: installing {' '.join(missing)} (log: {log})", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
    with log.open("a") as fh:
        ok = subprocess.call(install, stdout=fh, stderr=subprocess.STDOUT, env=env) == 0
        if not ok:
            subprocess.call(
                ["apt-get", "update", "-q"], stdout=fh, stderr=subprocess.STDOUT, env=env
            )
            ok = subprocess.call(install, stdout=fh, stderr=subprocess.STDOUT, env=env) == 0
    if not ok or missing_host_packages():
        raise VMError(
            f"setup: apt-get install {' '.join(missing)} failed; log: {log}\n" + tail(log, 15)
        )


def inside_command(mode: str) -> list[str]:
    return ["scripts/vm/inside", mode]


def guest_env() -> dict[str, str]:
    """What of the host's environment the command inside sees (CI makes a skip a failure)."""
    return {
        k: v
        for k, v in os.environ.items()
        if k == "CI" or k.startswith("CONTAINERSEC_TEST_") or k == "PYTEST_ADDOPTS"
    }


def copy_records(results: Path, dest: Path) -> int:
    src = results / "record"
    if not src.is_dir():
        raise VMError(f"record: nothing recorded in {src}; log: {results / 'output.log'}")
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    return sum(1 for p in dest.rglob("*") if p.is_file())


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="vm.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("setup", help="install qemu, debootstrap, e2fsprogs on this host if missing")
    b = sub.add_parser("build", help="build the image if its recipe changed")
    b.add_argument("--force", action="store_true")
    for name in ("run", "test", "record"):
        s = sub.add_parser(name)
        s.add_argument(
            "--accel",
            choices=["auto", "kvm", "tcg"],
            default=os.environ.get("CONTAINERSEC_VM_ACCEL", "auto"),
        )
        s.add_argument("--boot-timeout", type=float, default=300.0)
        s.add_argument("--timeout", type=float, default=1500.0, help="the command's, seconds")
        if name == "run":
            s.add_argument("command", nargs="+")
    args = p.parse_args(argv)

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    parent = os.getppid()
    set_pdeathsig(signal.SIGTERM)  # make (or whoever started us) died: stop too
    if os.getppid() != parent:
        return 130
    t0 = time.monotonic()
    try:
        if args.cmd == "setup":
            host_setup()
            return 0
        if shutil.which(QEMU) is None:  # the build's warm-up boot needs it too
            raise VMError(
                f"preflight: {QEMU} is missing (fix: apt-get install qemu-system-x86, "
                "or scripts/vm/vm.py setup)"
            )
        ensure_service_images()
        img = image.ensure_image(
            STATE,
            CHECKOUT,
            force=getattr(args, "force", False),
            warmup=warmup_boot,
            service_images=service_images_share(),
        )
        if args.cmd == "build":
            return 0
        cmd = list(args.command) if args.cmd == "run" else inside_command(args.cmd)
        rc = run_in_vm(
            img,
            cmd,
            env=guest_env(),
            accel=args.accel,
            boot_timeout=args.boot_timeout,
            cmd_timeout=args.timeout,
        )
        if args.cmd == "record" and rc == 0:
            n = copy_records(STATE / "runs/latest", CHECKOUT / "tests/data/vm")
            print(f"vm: copied {n} recorded files into {CHECKOUT / 'tests/data/vm'}")
        print(f"vm: {args.cmd} finished in {time.monotonic() - t0:.0f} s with status {rc}")
        return rc
    except image.BuildError as e:
        print(f"vm: error: {e}", file=sys.stderr)
        return 2
    except VMError as e:
        print(f"vm: error: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"vm: interrupted by {e}; qemu stopped", file=sys.stderr)
        return 128 + e.signum


if __name__ == "__main__":
    sys.exit(main())
