# shellcheck shell=bash
# The systemd-run and portable runtimes on hosts without systemd as PID 1: a Debian rootfs
# with systemd (and systemd-container: portablectl, systemd-portabled) that the runtimes
# boot once per session in systemd-nspawn. Built once with debootstrap
# (~60 s, ~110 MB) into $state/images/systemd-bookworm-container/rootfs (a new folder, not the
# systemd-bookworm one of the recipe without systemd-container, which checkouts still on it
# would otherwise rebuild back); the stamp says which recipe
# built it. Sourced by scripts/setup (say/did/die and $state come from there).

sd_dir=$state/images/systemd-bookworm-container
sd_suite=${CONTAINERSEC_SYSTEMD_SUITE:-bookworm}
sd_stamp="$sd_suite-minbase-systemd-dbus-container-v6"

if [ -d /run/systemd/system ]; then
  say "systemd-run: systemd is PID 1 here, no booted rootfs needed"
elif [ "$(cat "$sd_dir/stamp" 2>/dev/null)" = "$sd_stamp" ] && [ -x "$sd_dir/rootfs/lib/systemd/systemd" ] \
     && { [ -x "$sd_dir/rootfs/usr/bin/portablectl" ] || [ -x "$sd_dir/rootfs/bin/portablectl" ]; }; then
  say "systemd-run: rootfs $sd_dir/rootfs is up to date ($sd_stamp)"
else
  if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends debootstrap >>"$state/apt.log" 2>&1 \
      || { apt-get update -qq >>"$state/apt.log" 2>&1 \
           && apt-get install -y -qq --no-install-recommends debootstrap >>"$state/apt.log" 2>&1; } \
      || { tail -20 "$state/apt.log"; die "apt-get install debootstrap failed (log: $state/apt.log)"; }
    changed=1
  fi
  # The mirror apt already uses (no other network is reachable here).
  sd_mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
                | sed -n 's/^URIs:[[:space:]]*\(http[^[:space:]]*\/debian\)\/*$/\1/p' | head -1 || true)
  [ -n "$sd_mirror" ] || sd_mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                | awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' || true)
  sd_mirror=${CONTAINERSEC_DEBIAN_MIRROR:-${sd_mirror:-http://deb.debian.org/debian}}
  mkdir -p "$sd_dir"
  sd_tmp=$(mktemp -d "$sd_dir/.rootfs.XXXXXX")
  say "systemd-run: debootstrap $sd_suite from $sd_mirror (about 35 s; log: $state/debootstrap.log)"
  if ! debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,systemd-container \
         "$sd_suite" "$sd_tmp" "$sd_mirror" >"$state/debootstrap.log" 2>&1; then
    rm -rf "$sd_tmp"; tail -20 "$state/debootstrap.log"; die "debootstrap failed"
  fi
  # Boot only what units need: no consoles, no network or time services, no timers.
  for unit in getty@.service console-getty.service systemd-networkd.service \
              systemd-networkd.socket systemd-timesyncd.service apt-daily.timer \
              apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
              fstrim.timer systemd-tmpfiles-clean.timer remote-fs.target; do
    ln -sf /dev/null "$sd_tmp/etc/systemd/system/$unit"
  done
  echo containersec-systemd >"$sd_tmp/etc/hostname"
  mkdir -p "$sd_tmp/etc/systemd/journald.conf.d"  # the journal in memory: nothing to delete
  printf '[Journal]\nStorage=volatile\n' >"$sd_tmp/etc/systemd/journald.conf.d/containersec.conf"
  # The probe image's unprivileged user (uid 1000), so User=1000 means the same on every
  # runtime (systemd 252 refuses a numeric User= that has no passwd entry).
  grep -q '^user:' "$sd_tmp/etc/passwd" || {
    echo 'user:x:1000:1000:user:/home/user:/bin/sh' >>"$sd_tmp/etc/passwd"
    echo 'user:x:1000:' >>"$sd_tmp/etc/group"
    echo 'user:*:19000:0:99999:7:::' >>"$sd_tmp/etc/shadow"
    mkdir -p "$sd_tmp/home/user"; chown 1000:1000 "$sd_tmp/home/user"
  }
  rm -f "$sd_tmp/etc/machine-id"; : >"$sd_tmp/etc/machine-id"  # a fresh one each boot
  # Each session copies this tree: keep it small (no apt lists, docs, man pages, locales).
  rm -rf "$sd_tmp/var/cache/apt/archives/"*.deb "$sd_tmp/var/cache/apt/"*.bin \
         "$sd_tmp/var/lib/apt/lists/"* "$sd_tmp/usr/share/doc/"* "$sd_tmp/usr/share/man/"* \
         "$sd_tmp/usr/share/locale/"* "$sd_tmp/usr/share/info/"*
  mkdir -p "$sd_tmp/.containersec"
  chmod 0755 "$sd_tmp"  # mktemp made it 0700: no user but root could reach /
  rm -rf "$sd_dir/rootfs"
  mv "$sd_tmp" "$sd_dir/rootfs"
  echo "$sd_stamp" >"$sd_dir/stamp"
  did "systemd-run: built $sd_dir/rootfs ($(du -sh "$sd_dir/rootfs" | cut -f1))"
fi
