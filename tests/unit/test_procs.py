"""runtimes.procs: host-process helpers."""

from __future__ import annotations

from pytest_containersec.runtimes.procs import tool_output


def test_tool_output_never_raises_for_a_missing_or_slow_tool() -> None:
    assert tool_output(["/bin/echo", "systemd 257"]) == "systemd 257\n"
    assert tool_output(["/no/such/tool", "--version"]) == ""
    assert tool_output(["/bin/sleep", "5"], timeout=0.2) == ""  # a loaded host's slow tool
