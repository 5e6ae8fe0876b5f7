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

RUN is writable by the container (root inside may replace any name in it): the host side
(:mod:`.agent_client`) builds each request folder out of reach and renames it in with its
FIFOs already open, never resolves a path through RUN, reads ``pid`` bounded and kills it
only when it is a process below the container's main process.

argv[0] without a slash is looked up in ``$PATH`` by the script itself: busybox would
otherwise run its own applet of that name instead of the image's binary.
"""

from __future__ import annotations

from pathlib import Path

from ..agent_client import EOF_GRACE, AgentClient, Request, nul_bytes
from ..base import PROBE_BUSYBOX, PROBE_DIR

__all__ = ["EOF_GRACE", "AgentClient", "Request", "nul_bytes"]

RUN_DIR = f"{PROBE_DIR}/run"
TOOLS_DIR = f"{PROBE_DIR}/tools"
LOADER = "ld.so"
NAME_HINT = "nspawn"
AGENT_ARGV0 = "containersec-agent"

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
    path.write_bytes(nul_bytes(argv))
