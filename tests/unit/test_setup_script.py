"""scripts/setup says one line per step: an engine's import chatter goes to the setup
log, and a failure shows the log's tail (its import function, run on a fake engine)."""

from __future__ import annotations

import subprocess
from pathlib import Path

SETUP = Path(__file__).resolve().parents[2] / "scripts" / "setup"
HARNESS = r"""
set -euo pipefail
state=$1; changed=0
say() { printf 'setup: %s\n' "$*"; }
did() { changed=1; say "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
image=containersec/probe stamp=s1 tarball=$state/p.tar scratch_tar=$state/s.tar
: >"$tarball"; : >"$scratch_tar"
eval "$(sed -n '/^log=/p; /^quietly() {/,/^}/p; /^import_into() {/,/^}/p' "$2")"
: >"$log"
engine() {  # podman's way: progress on stderr, the image id on stdout
  case $1 in
    image) echo "${FAKE_HAVE:-}" ;;
    import) cat >/dev/null; printf 'Getting image source signatures\nCopying blob sha256:ab\n' >&2
            echo sha256:0123; [ -z "${FAKE_FAIL:-}" ] ;;
  esac
}
import_into "fake engine" engine
"""


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", HARNESS, "harness", str(tmp_path), str(SETUP)],
        capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin", **env},
    )  # fmt: skip


def test_an_import_says_one_line_and_logs_the_engine_output(tmp_path: Path) -> None:
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "setup: imported containersec/probe containersec/httpd containersec/scratch "
        "into fake engine\n"
    )
    assert r.stderr == ""
    log = (tmp_path / "setup.log").read_text()
    assert log.count("Copying blob sha256:ab") == 3
    assert "$ engine import -c CMD" in log


def test_nothing_to_import_says_nothing(tmp_path: Path) -> None:
    r = _run(tmp_path, FAKE_HAVE="s1")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")


def test_a_failed_import_shows_the_log_tail_and_names_the_log(tmp_path: Path) -> None:
    r = _run(tmp_path, FAKE_FAIL="1")
    assert r.returncode == 1
    assert r.stdout == ""
    assert "Copying blob sha256:ab" in r.stderr
    assert r.stderr.rstrip().endswith(
        f"setup: error: importing containersec/probe into fake engine failed "
        f"(log: {tmp_path}/setup.log)"
    )
