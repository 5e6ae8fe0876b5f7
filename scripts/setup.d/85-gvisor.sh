# shellcheck shell=bash
# gVisor for docker:runsc: register runsc (installed by 80-engines.sh where packaged) in
# the main Docker daemon's /etc/docker/daemon.json, merged into what is there, then reload
# the daemon (SIGHUP; "runtimes" is one of the options dockerd reloads live, so running
# containers and other sessions are untouched). --network=none: runsc's own netstack
# refuses the namespace Docker gives a --network none container (measured, Docker 20.10).
# Sourced by scripts/setup (say/did/die, $state).

if command -v runsc >/dev/null 2>&1 && command -v dockerd >/dev/null 2>&1; then
  gv_conf=/etc/docker/daemon.json
  gv_path=$(command -v runsc)
  gv_new=$(python3 - "$gv_conf" "$gv_path" <<'PY'
import json, sys
path, runsc = sys.argv[1], sys.argv[2]
try:
    with open(path) as f:
        conf = json.load(f)
except FileNotFoundError:
    conf = {}
want = {"path": runsc, "runtimeArgs": ["--network=none"]}
if conf.get("runtimes", {}).get("runsc") == want:
    sys.exit(0)
conf.setdefault("runtimes", {})["runsc"] = want
print(json.dumps(conf, indent=2, sort_keys=True))
PY
  ) || die "cannot read $gv_conf (not JSON?)"
  if [ -n "$gv_new" ]; then
    mkdir -p /etc/docker
    printf '%s\n' "$gv_new" >"$gv_conf.containersec.tmp" && mv "$gv_conf.containersec.tmp" "$gv_conf"
    if [ -d /run/systemd/system ] && systemctl is-active -q docker 2>/dev/null; then
      systemctl reload docker || die "systemctl reload docker failed after registering runsc"
    elif [ -s /var/run/docker.pid ]; then
      kill -HUP "$(cat /var/run/docker.pid)" || die "cannot signal dockerd to reload $gv_conf"
    fi
    did "registered runsc (gVisor) in $gv_conf for docker:runsc, daemon reloaded"
    changed=1
  fi
fi
