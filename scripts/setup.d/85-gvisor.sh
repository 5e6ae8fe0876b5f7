# shellcheck shell=bash
# The docker:crun and docker:runsc variants: register crun and gVisor's runsc (installed by
# 80-engines.sh where packaged) in the main Docker daemon's /etc/docker/daemon.json, merged
# into what is there, then reload the daemon (SIGHUP; "runtimes" is one of the options
# dockerd reloads live, so running containers and other sessions are untouched).
# runsc gets --network=none: its own netstack refuses the namespace Docker gives a
# --network none container (measured, Docker 20.10). crun registered on a cgroup v1
# hybrid host refuses every start there; docker:crun then reports that refusal.
# Sourced by scripts/setup (say/did/die, $state).

if command -v dockerd >/dev/null 2>&1; then
  gv_conf=/etc/docker/daemon.json
  gv_args=()
  for gv_rt in crun runsc; do
    command -v "$gv_rt" >/dev/null 2>&1 && gv_args+=("$gv_rt=$(command -v "$gv_rt")")
  done
  if [ ${#gv_args[@]} -gt 0 ]; then
    gv_new=$(python3 - "$gv_conf" "${gv_args[@]}" <<'PY'
import json, sys
path, wanted = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
try:
    with open(path) as f:
        conf = json.load(f)
except FileNotFoundError:
    conf = {}
runtimes = conf.setdefault("runtimes", {})
changed = False
for name, binary in wanted.items():
    want = {"path": binary, **({"runtimeArgs": ["--network=none"]} if name == "runsc" else {})}
    if runtimes.get(name) != want:
        runtimes[name], changed = want, True
if changed:
    print(json.dumps(conf, indent=2, sort_keys=True))
PY
    ) || die "cannot read $gv_conf (not JSON?)"
    if [ -n "$gv_new" ]; then
      mkdir -p /etc/docker
      printf '%s\n' "$gv_new" >"$gv_conf.containersec.tmp" && mv "$gv_conf.containersec.tmp" "$gv_conf"
      if [ -d /run/systemd/system ] && systemctl is-active -q docker 2>/dev/null; then
        systemctl reload docker || die "systemctl reload docker failed after registering ${gv_args[*]%%=*}"
      elif [ -s /var/run/docker.pid ]; then
        kill -HUP "$(cat /var/run/docker.pid)" || die "cannot signal dockerd to reload $gv_conf"
      fi
      did "registered ${gv_args[*]%%=*} in $gv_conf for the docker: variants, daemon reloaded"
      changed=1
    fi
  fi
fi
