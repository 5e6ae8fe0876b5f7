"""The nspawn payload: a tiny busybox-sh agent that runs commands with the payload's confinement.

``systemd-nspawn`` runs ``busybox sh -c AGENT_SCRIPT containersec-agent RUN MAIN...``. The
script forks the agent loop, then ``exec``s MAIN (the spec's command or an idle sleep),
which becomes the container's main process (``host_pid``). The agent stays beside it, a
child of the same process tree, so every command it runs inherits exactly what nspawn set
up: seccomp filter, capability bounding set, user namespace, cgroup, no_new_privs.

Protocol (RUN is a host directory bind-mounted at /.containersec/run):

- ``RUN/prefix``: NUL-separated argv put in front of every command (the user switch,
  see :func:`drop_prefix`); ``RUN/req``: FIFO of request ids, one per line;
  ``RUN/ready``: FIFO the agent writes once when it listens.
- per request ``RUN/<id>/argv`` (NUL-separated, never interpolated: ``read -d ''`` puts
  each item in a variable and the command runs as ``"$@"``) and FIFOs ``out``, ``err``,
  ``rc`` the host reads; ``pid`` holds the command's pid (for a kill on timeout); an
  empty ``root`` file: run it without the prefix, as the agent itself (the container's
  root: how the probe takes on another process's identity with setpriv).

argv[0] without a slash is looked up in ``$PATH`` by the script itself: busybox would
otherwise run its own applet of that name instead of the image's binary.
"""

from __future__ import annotations

import errno
import os
import select
import time
from pathlib import Path

from ..errors import ContainerStartError, ExecTimeout, ProbeError
from . import procs
from .base import PROBE_BUSYBOX, PROBE_DIR, ExecResult
from .oci import BoundedBuffer

RUN_DIR = f"{PROBE_DIR}/run"
TOOLS_DIR = f"{PROBE_DIR}/tools"
LOADER = "ld.so"
NAME_HINT = "nspawn"
AGENT_ARGV0 = "containersec-agent"
EOF_GRACE = 1.0  # seconds to wait for stdout/stderr EOF after the exit code came back

# Shell functions both agents (nspawn's and systemd-run's) use: PATH lookup done by the
# script itself (busybox would otherwise run its own applet instead of the image's binary).
SH_RESOLVE = r"""resolve() {
  case $1 in */*) r=$1; return 0;; esac
  r=; o=$IFS; IFS=:
  for p in ${PATH:-/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin}; do
    if [ -f "${p:-.}/$1" ] && [ -x "${p:-.}/$1" ]; then r=${p:-.}/$1; break; fi
  done
  IFS=$o; [ -n "$r" ]
}
notfound() { echo "containersec: $1: executable file not found in \$PATH"; }
"""

# Both agents end alike: resolve the main command on PATH, serve execs in the
# background, then become the main command ($i counts over the first $n arguments).
SH_EXEC_MAIN = r"""while [ $i -lt $n ]; do
  a=$1; shift
  if [ $i = 0 ]; then resolve "$a" || { notfound "$a" >&2; exit 127; }; a=$r; fi
  set -- "$@" "$a"; i=$((i+1))
done
serve </dev/null &
exec "$@"
"""

AGENT_SCRIPT = (
    r"""set -f
run=$1; shift
"""
    + SH_RESOLVE
    + r"""handle() {
  d=$run/$1; set --; first=1
  [ -e "$d/root" ] ||
    while IFS= read -r -d '' a; do set -- "$@" "$a"; done <"$run/prefix"
  while IFS= read -r -d '' a; do
    if [ $first = 1 ]; then
      first=0
      if ! resolve "$a"; then
        notfound "$a" >"$d/err"; : >"$d/out"; echo 127 >"$d/rc"; return
      fi
      a=$r
    fi
    set -- "$@" "$a"
  done <"$d/argv"
  "$@" </dev/null >"$d/out" 2>"$d/err" 3<&- &
  echo $! >"$d/pid"
  wait $!
  echo $? >"$d/rc"
}
serve() {
  exec 3<>"$run/req"
  echo ready >"$run/ready"
  while IFS= read -r id <&3; do
    case $id in ''|*[!0-9]*) continue;; esac
    handle "$id" &
  done
}
n=$#
while IFS= read -r -d '' a; do set -- "$@" "$a"; done <"$run/prefix"
i=0
"""
    + SH_EXEC_MAIN
)


def payload_argv(main: list[str]) -> list[str]:
    """What nspawn runs: the agent script with the main command as its arguments."""
    return [PROBE_BUSYBOX, "sh", "-c", AGENT_SCRIPT, AGENT_ARGV0, RUN_DIR, *main]


# -- user: docker's --user semantics, resolved against the image's /etc files ----------


def _entries(text: str | None) -> list[list[str]]:
    if not text:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(
    user: str, passwd: str | None, group: str | None
) -> tuple[int, int, list[int], str | None, str | None]:
    """``(uid, gid, supplementary gids, name, home)`` as ``docker run --user`` resolves it.

    Raises ValueError with docker's wording when a name is not in the image (pure).
    """
    upart, _, gpart = user.partition(":")
    pw = [e for e in _entries(passwd) if len(e) >= 7]
    gr = [e for e in _entries(group) if len(e) >= 3]
    entry = next((e for e in pw if e[0] == upart), None)
    if entry is None and upart.isdigit():
        entry = next((e for e in pw if e[2] == upart), None)
    if entry is not None:
        uid, gid, name, home = int(entry[2]), int(entry[3]), entry[0], entry[5]
    elif upart.isdigit():
        uid, gid, name, home = int(upart), 0, None, None
    else:
        raise ValueError(f"unable to find user {upart}: no matching entries in passwd file")
    extra: list[int] = []
    if gpart:
        g = next((e for e in gr if e[0] == gpart), None)
        if g is None and gpart.isdigit():
            gid = int(gpart)
        elif g is None:
            raise ValueError(f"unable to find group {gpart}: no matching entries in group file")
        else:
            gid = int(g[2])
    elif name is not None:
        extra = sorted(
            {int(e[2]) for e in gr if len(e) >= 4 and name in e[3].split(",") and e[2].isdigit()}
            - {gid}
        )
    return uid, gid, extra, name, home


HELPER_CAPS = frozenset({"CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"})


def drop_prefix(uid: int, gid: int, groups: list[int], helper_caps: frozenset[str]) -> list[str]:
    """argv that switches to ``uid``/``gid``/``groups``, then drops ``helper_caps``.

    busybox's setpriv has neither --reuid nor --bounding-set, and a user switch after
    nspawn dropped CAP_SETUID is impossible. So nspawn keeps the helper capabilities in
    the bounding set, and the host's util-linux setpriv (run by its own loader from
    TOOLS_DIR) switches user and then removes them. Leaving uid 0 makes the kernel clear
    CapPrm/CapEff/CapAmb; CapInh is cleared too: the state ``docker run --user`` gives.
    """
    ld = f"{TOOLS_DIR}/{LOADER}"
    argv = [ld, "--library-path", TOOLS_DIR, f"{TOOLS_DIR}/setpriv"]
    argv += [f"--reuid={uid}", f"--regid={gid}"]
    argv += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    if uid != 0:
        argv.append("--inh-caps=-all")
    if helper_caps:
        drop = ",".join(f"-{c.removeprefix('CAP_').lower()}" for c in sorted(helper_caps))
        argv.append(f"--bounding-set={drop}")
    return [*argv, "--"]


def write_nul(path: Path, argv: list[str]) -> None:
    if any("\0" in a for a in argv):
        raise ValueError("an argument contains a NUL byte")
    path.write_bytes(b"".join(a.encode() + b"\0" for a in argv))


# -- host side of the protocol ----------------------------------------------------------


class AgentClient:
    """Talks to one container's agent through its run directory."""

    def __init__(self, runtime: str, run: Path) -> None:
        self.runtime = runtime
        self.run = run
        self._counter = 0
        self._req: int | None = None
        self._ready: int | None = None

    def prepare(self, prefix: list[str]) -> None:
        """Before nspawn starts: the run directory, its FIFOs and the prefix."""
        self.run.mkdir(mode=0o700)
        write_nul(self.run / "prefix", prefix)
        os.mkfifo(self.run / "req", 0o600)
        os.mkfifo(self.run / "ready", 0o600)
        self._ready = os.open(self.run / "ready", os.O_RDONLY | os.O_NONBLOCK)

    def wait_ready(self, pidfd: int, timeout: float, argv: list[str]) -> bool:
        """True when the agent listens; False when nspawn exited first."""
        assert self._ready is not None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            r, _, _ = select.select([self._ready, pidfd], [], [], left)
            if self._ready in r and os.read(self._ready, 64):
                try:
                    self._req = os.open(self.run / "req", os.O_WRONLY | os.O_NONBLOCK)
                except OSError as exc:  # ENXIO: no reader, the payload exited at once
                    if exc.errno != errno.ENXIO:
                        raise
                    return False
                os.set_blocking(self._req, True)
                return True
            if pidfd in r:
                return False
        raise ContainerStartError(self.runtime, argv, None, f"agent not ready after {timeout}s")

    def close(self) -> None:
        for fd in (self._req, self._ready):
            if fd is not None:
                os.close(fd)
        self._req = self._ready = None

    def exec(
        self, argv: list[str], timeout: float, container_root: int, as_root: bool = False
    ) -> ExecResult:
        if self._req is None:
            raise ProbeError(self.runtime, "the container is stopped")
        self._counter += 1
        n = self._counter
        d = self.run / str(n)
        d.mkdir(mode=0o700)
        fds: dict[int, str] = {}
        try:
            write_nul(d / "argv", argv)
            if as_root:
                (d / "root").touch(0o600)
            for name in ("out", "err", "rc"):
                os.mkfifo(d / name, 0o600)
                fds[os.open(d / name, os.O_RDONLY | os.O_NONBLOCK)] = name
            try:
                os.write(self._req, f"{n}\n".encode())
            except OSError as exc:
                raise ProbeError(self.runtime, f"the agent is gone ({exc})") from None
            bufs = {"out": BoundedBuffer(), "err": BoundedBuffer(), "rc": BoundedBuffer(64)}
            if not self._pump(fds, bufs, time.monotonic() + timeout):
                cmd = self._command_pid(d, container_root)
                if cmd is not None:
                    parent = procs.parent(cmd)
                    procs.kill_tree(cmd)
                    if parent is not None:
                        procs.kill_tree(parent)  # the agent's handler subshell
                raise ExecTimeout(self.runtime, argv, timeout)
            rc_text = bufs["rc"].text().strip()
            rc = int(rc_text) if rc_text.isdigit() else -1
            return ExecResult(rc, bufs["out"].text(), bufs["err"].text())
        finally:
            for fd in fds:
                os.close(fd)
            _rmtree_flat(d)

    @staticmethod
    def _pump(fds: dict[int, str], bufs: dict[str, BoundedBuffer], deadline: float) -> bool:
        """Read until every FIFO hit EOF; False on timeout."""
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        open_fds = set(fds)
        rc_at: float | None = None
        while open_fds:
            now = time.monotonic()
            if now >= deadline:
                return False
            if rc_at is not None and now - rc_at > EOF_GRACE:
                return True  # a background child keeps stdout open: docker would wait
            wait = min(deadline, rc_at + EOF_GRACE if rc_at else deadline) - now
            for fd, ev in poller.poll(max(1, int(wait * 1000))):
                chunk = os.read(fd, 65536) if ev & (select.POLLIN | select.POLLHUP) else b""
                if chunk:
                    bufs[fds[fd]].add(chunk)
                elif ev & (select.POLLHUP | select.POLLERR | select.POLLIN):
                    poller.unregister(fd)
                    open_fds.discard(fd)
                    if fds[fd] == "rc":
                        rc_at = time.monotonic()
        return True

    @staticmethod
    def _command_pid(d: Path, container_root: int) -> int | None:
        for _ in range(50):
            try:
                inner = int((d / "pid").read_text().strip())
            except (OSError, ValueError):
                time.sleep(0.01)
                continue
            return procs.find_inner(container_root, inner)
        return None


def _rmtree_flat(d: Path) -> None:
    try:
        for entry in os.scandir(d):
            os.unlink(entry.path)
        d.rmdir()
    except OSError:
        pass
