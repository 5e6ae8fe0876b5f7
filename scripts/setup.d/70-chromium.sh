# shellcheck shell=bash
# Headless Chromium (Debian's chromium package) for tests/integration/test_html_browser.py,
# which renders the HTML matrix page, reads back the DOM and checks a screenshot.
# Sourced by scripts/setup (say/did/die and $state come from there).

if [ "${CONTAINERSEC_VM:-}" = 1 ]; then
  say "chromium: skipped in the VM tier (offline; the browser test runs on the host tier)"
elif [ -x /usr/bin/chromium ]; then
  say "chromium: installed ($(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo not from apt))"
else
  say "installing chromium (log: $state/apt-chromium.log)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends chromium >"$state/apt-chromium.log" 2>&1 \
    || { apt-get update -qq >>"$state/apt-chromium.log" 2>&1 \
         && apt-get install -y -qq --no-install-recommends chromium >>"$state/apt-chromium.log" 2>&1; } \
    || { tail -20 "$state/apt-chromium.log" >&2; die "apt-get install chromium failed (log: $state/apt-chromium.log)"; }
  [ -x /usr/bin/chromium ] || die "chromium installed but /usr/bin/chromium is missing"
  did "installed chromium $(dpkg-query -W -f='${Version}' chromium)"
fi
