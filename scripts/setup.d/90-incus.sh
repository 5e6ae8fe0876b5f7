# shellcheck shell=bash
# The incus runtime, only where Incus is installed (Debian trixie: incus-base, incus-client;
# bookworm has no Incus, and this step then does nothing): initialise the daemon offline,
# with a `dir` storage pool and NO network at all (no bridge, no nic in the default profile:
# a container has its own network namespace with loopback only), then import the probe
# rootfs built above as a local image (a unified tarball: metadata.yaml + rootfs/), under the
# alias the adapter looks for (runtimes/incus/incus_image.py): containersec/<cache key>/<the
# first 12 hex of the sha256 of the rootfs cache's stamp>. No registry, no download.
# Sourced by scripts/setup (say/did/die, $state, $stamp, $rootfs).

if command -v incus >/dev/null 2>&1; then
  if [ -d /run/systemd/system ] && ! systemctl is-active -q incus.service; then
    systemctl start incus.socket incus.service || die "incus: systemctl start incus failed (journalctl -u incus)"
  fi
  timeout 120 incus admin waitready --timeout 100 \
    || die "incus: the daemon is not ready after 100 s (journalctl -u incus)"
  if ! incus storage show default >/dev/null 2>&1; then  # (its first call prints a hint to stderr)
    incus admin init --preseed <<'EOF' || die "incus: admin init --preseed failed"
config: {}
networks: []
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  description: "containersec: a dir pool, no network device"
  devices:
    root:
      path: /
      pool: default
      type: disk
EOF
    did "incus: initialised offline (a dir storage pool, no network)"
  fi
  inc_alias=containersec/containersec_probe/$(printf '%s' "$stamp" | sha256sum | cut -c1-12)
  if ! incus image info "$inc_alias" >/dev/null 2>&1; then
    inc_tmp=$(mktemp -d)
    printf 'architecture: %s\ncreation_date: %s\nproperties:\n  description: containersec probe %s\n  os: containersec\n  release: probe\n' \
      "$(uname -m)" "$(date +%s)" "$stamp" >"$inc_tmp/metadata.yaml"
    tar --numeric-owner -cf "$inc_tmp/image.tar" -C "$inc_tmp" metadata.yaml -C "${rootfs%/rootfs}" rootfs \
      || die "incus: cannot pack $rootfs"
    incus image import "$inc_tmp/image.tar" --alias "$inc_alias" >/dev/null \
      || die "incus: image import of the probe rootfs failed"
    rm -rf "$inc_tmp"
    did "incus: imported the probe rootfs as $inc_alias"
  fi
fi
