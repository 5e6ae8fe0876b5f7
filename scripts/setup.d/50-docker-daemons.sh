# shellcheck shell=bash
# Sourced by scripts/setup (section 6): the daemons of the docker-userns and docker-rootless
# runtimes, and the three local images in their stores.
#
# Both daemons are managed by pytest_containersec/runtimes/docker/docker_daemons.py (one place
# for their flags): docker-userns is `dockerd --userns-remap=default` as root on
# /run/containersec/docker-userns.sock (data root $state/docker-userns); docker-rootless is
# dockerd-rootless.sh (rootlesskit) as $rootless_user on $xdg/docker.sock (data root in
# that user's ~/.local/share/docker). Setup starts each one only if none answers, holding
# a lease for this shell, imports the images, and releases the lease: a daemon setup
# started is stopped again, so nothing is left running; a test session starts it on first
# use (about 0.3 s here) and its last user stops it. A daemon that was already running is
# left alone. If setup dies half-way, the next session (or `containersec reap`) stops it.

for tool in rootlesskit:rootlesskit newuidmap:uidmap dockerd:docker.io; do
  if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "${tool#*:}" >>"$state/apt.log" 2>&1 \
      || die "apt-get install ${tool#*:} failed (log: $state/apt.log)"
    did "installed ${tool#*:}"
  fi
done

docker_daemons() {  # the package's daemon manager, before the venv exists too (stdlib only)
  local py=python3
  [ -x "$venv/bin/python" ] && py=$venv/bin/python
  PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}" "$py" -m pytest_containersec.runtimes.docker.docker_daemons "$@"
}

for runtime in docker-userns docker-rootless; do
  url=$(docker_daemons up "$runtime" --lease-pid $$) || die "cannot start the $runtime daemon"
  import_into "$runtime" /usr/bin/docker -H "$url"
  docker_daemons down "$runtime" --lease-pid $$ || die "cannot stop the $runtime daemon"
done
