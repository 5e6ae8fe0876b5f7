# shellcheck shell=bash
# Sourced by scripts/setup (section 6): the service test images (containersec/nginx,
# postgres, setuid, distroless), built from Debian packages by scripts/service-images
# (apt-get download + dpkg-deb -x; never a registry), cached as tarballs by recipe hash
# in $CONTAINERSEC_SERVICE_IMAGES (default $state/images/service), and imported into
# every store the probe image is in: Docker, rootful Podman, the rootless user's Podman,
# the docker-userns and docker-rootless daemons, and the nspawn rootfs cache.
#
# Without an apt mirror (a VM with no network) and without the tarballs, nothing is built
# and setup goes on; the tests that use these images then fail with ImageNotFound. Copy
# the folder from a host that built them (same stamp) to provide them.

si_tool=$here/scripts/service-images
si_dir=${CONTAINERSEC_SERVICE_IMAGES:-$state/images/service}
si_stamp=$("$si_tool" stamp)
si_names=$("$si_tool" names)
si_missing=()

[ -d "$si_dir" ] || mkdir -p "$si_dir"  # the VM's share of the host's tarballs is read-only
if ! command -v setcap >/dev/null 2>&1; then  # the setuid image's `setcap cap_net_raw+ep`
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends libcap2-bin >>"$state/apt.log" 2>&1 \
    && did "installed libcap2-bin" || say "service images: cannot install libcap2-bin (no mirror?)"
fi
for si_name in $si_names; do
  if [ "$(cat "$si_dir/$si_name.stamp" 2>/dev/null)" = "$si_stamp" ] && [ -f "$si_dir/$si_name.tar" ]; then
    continue
  fi
  command -v dpkg-deb >/dev/null && command -v apt-get >/dev/null && command -v setcap >/dev/null \
    && [ -z "${si_nomirror:-}" ] || { si_missing+=("$si_name"); continue; }
  say "service images: building containersec/$si_name from Debian packages (log: $state/service-images.log)"
  si_t0=$SECONDS
  si_rc=0
  "$si_tool" build "$si_name" "$si_dir" >>"$state/service-images.log" 2>&1 || si_rc=$?
  if [ $si_rc -eq 3 ]; then
    si_missing+=("$si_name"); si_nomirror=1
  elif [ $si_rc -ne 0 ]; then
    tail -20 "$state/service-images.log" >&2
    die "building containersec/$si_name failed (log: $state/service-images.log)"
  else
    did "service images: built containersec/$si_name in $((SECONDS - si_t0)) s ($(du -h "$si_dir/$si_name.tar" | cut -f1))"
  fi
done
if [ -w "$si_dir" ]; then
  chmod 0755 "$si_dir"
  chmod 0644 "$si_dir"/*.tar "$si_dir"/*.changes "$si_dir"/*.json 2>/dev/null || true
fi

if [ ${#si_missing[@]} -gt 0 ]; then
  say "service images: SKIPPED ${si_missing[*]}: no apt mirror is reachable (or no package lists," \
      "or dpkg-deb/setcap missing) and $si_dir has no tarballs of recipe $si_stamp;" \
      "build them where a mirror is (scripts/service-images build NAME DIR) and copy DIR here" \
      "or point CONTAINERSEC_SERVICE_IMAGES at it"
fi

si_import() {  # $1: label, rest: the engine command (docker -H URL | podman | as_rootless podman)
  local label=$1 n have line t0=$SECONDS
  shift
  local -a changes imported=()
  for n in $si_names; do
    [ -f "$si_dir/$n.tar" ] && [ "$(cat "$si_dir/$n.stamp" 2>/dev/null)" = "$si_stamp" ] || continue
    have=$("$@" image inspect --format '{{index .Config.Labels "io.containersec.stamp"}}' \
             "containersec/$n" 2>/dev/null || true)
    [ "$have" != "$si_stamp" ] || continue
    changes=()
    while IFS= read -r line; do [ -z "$line" ] || changes+=(-c "$line"); done <"$si_dir/$n.changes"
    quietly "$@" import "${changes[@]}" - "containersec/$n" <"$si_dir/$n.tar" \
      || die "importing containersec/$n into $label failed (log: $log)"
    imported+=("containersec/$n")
  done
  [ ${#imported[@]} -eq 0 ] || did "service images: imported ${imported[*]} into $label in $((SECONDS - t0)) s"
}

si_nspawn_cache() {  # the nspawn runtime's rootfs cache (runtimes/nspawn/nspawn_image.py layout)
  local n final tmp t0
  for n in $si_names; do
    t0=$SECONDS
    [ -f "$si_dir/$n.tar" ] && [ "$(cat "$si_dir/$n.stamp" 2>/dev/null)" = "$si_stamp" ] || continue
    final=$state/images/containersec_$n
    [ "$(cat "$final/stamp" 2>/dev/null)" != "$si_stamp" ] || [ ! -d "$final/rootfs" ] || continue
    tmp=$(mktemp -d "$state/images/.containersec_$n.XXXXXX")
    mkdir "$tmp/rootfs"
    tar --numeric-owner --xattrs --xattrs-include=security.capability -xpf "$si_dir/$n.tar" -C "$tmp/rootfs" \
      || { rm -rf "$tmp"; die "extracting containersec/$n for nspawn failed"; }
    cp "$si_dir/$n.json" "$tmp/config.json"
    echo "$si_stamp" >"$tmp/stamp"
    chmod 0755 "$tmp" "$tmp/rootfs"
    rm -rf "$final"; mv "$tmp" "$final"
    did "service images: containersec/$n in the nspawn cache ($final) in $((SECONDS - t0)) s"
  done
}

si_daemon_import() {  # $1: docker-userns | docker-rootless, up for the import only
  local url
  url=$(docker_daemons up "$1" --lease-pid $$) || die "cannot start the $1 daemon"
  si_import "$1" /usr/bin/docker -H "$url"
  docker_daemons down "$1" --lease-pid $$ || die "cannot stop the $1 daemon"
}

# Each store at once (its own daemon or folder; under TCG the imports take minutes each,
# measured 55-109 s per store for all four images): each job's lines are shown when all end.
if ls "$si_dir"/*.tar >/dev/null 2>&1; then
  si_out=$(mktemp -d)
  si_pids=()
  si_job() {  # si_job NAME CMD...: CMD in the background, its output in $si_out/NAME
    local name=$1
    shift
    "$@" >"$si_out/$name" 2>&1 &
    si_pids+=("$!")
  }
  si_job 1docker si_import docker /usr/bin/docker -H unix:///var/run/docker.sock
  si_job 2podman si_import "rootful podman" podman
  si_job 3podman-rootless si_import "rootless podman ($rootless_user)" as_rootless podman
  si_job 4docker-userns si_daemon_import docker-userns
  si_job 5docker-rootless si_daemon_import docker-rootless
  si_job 6nspawn si_nspawn_cache
  si_failed=0
  for si_pid in "${si_pids[@]}"; do wait "$si_pid" || si_failed=1; done
  for si_file in "$si_out"/*; do
    [ -s "$si_file" ] || continue
    cat "$si_file"
    grep -q '^setup: service images:' "$si_file" && changed=1
  done
  rm -rf "$si_out"
  [ $si_failed -eq 0 ] || die "service images: an import failed (above; log: $log)"
fi
