# shellcheck shell=bash
# More engines: LXC (the lxc runtime), containerd's ctr (the containerd runtime) and the
# OCI runtimes that podman:/docker: variants select (runc, crun, gVisor's runsc where the
# distribution packages it). Sourced by scripts/setup (say/did/die, $state, $tarball).

eng_packages=(lxc containerd runc crun)
# gVisor: Debian packages it as "runsc" (bookworm: a 2022 snapshot; trixie: newer).
apt-cache show runsc >/dev/null 2>&1 && eng_packages+=(runsc)
eng_missing=()
for p in "${eng_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || eng_missing+=("$p")
done
if [ ${#eng_missing[@]} -gt 0 ]; then
  say "installing ${eng_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq --no-install-recommends "${eng_missing[@]}" >>"$state/apt.log" 2>&1 \
    || { apt-get update -qq >>"$state/apt.log" 2>&1 \
         && apt-get install -y -qq --no-install-recommends "${eng_missing[@]}" >>"$state/apt.log" 2>&1; }; } \
    || { tail -20 "$state/apt.log"; die "apt-get install ${eng_missing[*]} failed (log: $state/apt.log)"; }
  changed=1
fi

# LXC maps ids through newuidmap/newgidmap, which insist that root, too, has subordinate
# ranges: give root one of its own, after every range handed out so far.
# One start for both files: LXC needs the same range in each.
touch /etc/subuid /etc/subgid
eng_next=$(awk -F: '$2 ~ /^[0-9]+$/ && $3 ~ /^[0-9]+$/ { e = $2 + $3; if (e > m) m = e }
                    END { print (m > 231072 ? m : 231072) }' /etc/subuid /etc/subgid)
for f in /etc/subuid /etc/subgid; do
  if ! grep -q '^root:' "$f"; then
    echo "root:$eng_next:65536" >>"$f"
    did "gave root the range $eng_next:65536 in $f (LXC's idmap)"
  fi
done
