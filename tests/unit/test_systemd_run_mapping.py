"""ContainerSpec -> unit properties, systemctl show / systemd-analyze -> declared, and the
declared-verdict-vs-observed rules, without starting anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_containersec.errors import SpecError, UnsupportedSpec
from pytest_containersec.linux import caps
from pytest_containersec.model import AccessResult, Capabilities, Mismatch
from pytest_containersec.observe import analyze
from pytest_containersec.report import report
from pytest_containersec.runtimes import RUNTIME_NAMES
from pytest_containersec.runtimes.base import PROBE_BUSYBOX
from pytest_containersec.runtimes.docker import docker
from pytest_containersec.runtimes.nspawn import nspawn_spec
from pytest_containersec.runtimes.podman import podman_spec
from pytest_containersec.runtimes.systemd import systemd_run_declared as decl
from pytest_containersec.runtimes.systemd.systemd_run import AGENT_SCRIPT, agent_command
from pytest_containersec.runtimes.systemd.systemd_run_host import nspawn_argv
from pytest_containersec.spec import ContainerSpec

from .factories import facts

HARDENED = ContainerSpec(
    user="1000:1000",
    cap_drop=["ALL"],
    cap_add=["NET_BIND_SERVICE"],
    no_new_privileges=True,
    read_only=True,
    memory="64m",
    pids_limit=32,
    cpus=0.5,
    properties={"ProtectHome": "yes", "PrivateTmp": True},
)


def props(spec: ContainerSpec, host: bool = False) -> dict[str, str]:
    return dict(decl.unit_properties(spec, host))


def test_registered_after_nspawn() -> None:
    assert RUNTIME_NAMES.index("systemd-run") > RUNTIME_NAMES.index("nspawn")


def test_default_spec() -> None:
    assert decl.unit_properties(ContainerSpec(), False) == [
        ("Type", "exec"),
        ("SystemCallFilter", "@system-service"),
        ("SystemCallErrorNumber", "EPERM"),
        ("PrivateNetwork", "yes"),
        ("IPAddressDeny", "any"),
    ]


def test_plain_unit_has_no_confinement_at_all() -> None:
    assert props(ContainerSpec(seccomp="unconfined", network="host")) == {"Type": "exec"}
    assert props(ContainerSpec(privileged=True, network="host", cap_drop=["NET_RAW"])) == {
        "Type": "exec"
    }


def test_hardened_spec() -> None:
    p = props(HARDENED)
    assert p["User"] == "1000"
    assert p["Group"] == "1000"
    assert p["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert p["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"  # a non-root user needs it
    assert p["NoNewPrivileges"] == "yes"
    assert p["ProtectSystem"] == "strict"
    assert p["MemoryMax"] == str(64 * 1024**2)
    assert p["TasksMax"] == "32"
    assert p["CPUQuota"] == "50%"
    assert p["ProtectHome"] == "yes"
    assert p["PrivateTmp"] == "yes"


def test_capability_arithmetic() -> None:
    assert props(ContainerSpec(cap_drop=["ALL"]))["CapabilityBoundingSet"] == ""
    keep = props(ContainerSpec(cap_drop=["SYS_ADMIN", "NET_RAW"]))["CapabilityBoundingSet"]
    assert set(keep.split()) == caps.ALL_CAPS - {"CAP_SYS_ADMIN", "CAP_NET_RAW"}
    root = props(ContainerSpec(cap_drop=["ALL"], cap_add=["CHOWN"], user="0"))
    assert root["CapabilityBoundingSet"] == "CAP_CHOWN"
    assert "AmbientCapabilities" not in root  # root has its capabilities anyway


def test_properties_replace_mapped_ones_and_stay_hashable() -> None:
    spec = ContainerSpec(read_only=True, properties={"ProtectSystem": "full", "Type": "simple"})
    p = decl.unit_properties(spec, False)
    assert ("ProtectSystem", "full") in p
    assert ("ProtectSystem", "strict") not in p
    assert ("Type", "simple") in p
    assert ("Type", "exec") not in p
    assert spec.properties == (("ProtectSystem", "full"), ("Type", "simple"))
    assert hash(spec) == hash(spec.replace())
    assert spec.to_dict()["properties"] == {"ProtectSystem": "full", "Type": "simple"}


@pytest.mark.parametrize(
    "value", [{"lower": "x"}, {"A": "two\nlines"}, "ProtectHome=yes", [("A",)], {"A-B": "x"}]
)
def test_invalid_properties(value: object) -> None:
    with pytest.raises(SpecError):
        ContainerSpec(properties=value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (ContainerSpec(image="myapp:1"), "image"),
        (ContainerSpec(seccomp="/profile.json"), "seccomp"),
        (ContainerSpec(userns="0:100000:65536"), "userns"),
        (ContainerSpec(volumes=["/a:/b"]), "volumes"),
        (ContainerSpec(properties={"RootDirectory": "/srv"}), "properties"),
        (ContainerSpec(properties={"ExecStart": "/bin/true"}), "properties"),
    ],
)
def test_unsupported(spec: ContainerSpec, field: str) -> None:
    with pytest.raises(UnsupportedSpec) as info:
        decl.unit_properties(spec, False)
    assert info.value.field == field
    assert info.value.runtime == "systemd-run"


def test_volumes_and_userns_on_a_systemd_host() -> None:
    p = decl.unit_properties(ContainerSpec(volumes=["/a:/b", "/c:/d:ro"], userns="auto"), True)
    assert ("BindPaths", "/a:/b") in p
    assert ("BindReadOnlyPaths", "/c:/d") in p
    assert ("PrivateUsers", "yes") in p


def test_other_runtimes_refuse_properties() -> None:
    spec = ContainerSpec(properties={"ProtectHome": "yes"})
    for call in (
        lambda: docker.host_config(spec, "docker", "/probe"),
        lambda: podman_spec.create_kwargs(spec, "podman", probe="/probe"),
        lambda: nspawn_spec.spec_args(spec, False),
    ):
        with pytest.raises(UnsupportedSpec) as info:
            call()
        assert info.value.field == "properties"


def test_run_argv_doubles_dollars_and_passes_env() -> None:
    argv = decl.run_argv("u.service", [("User", "1000")], ["sh", "-c", "echo $HOME ${x}"],
                         [("A", "$1")])  # fmt: skip
    assert argv[:4] == ["systemd-run", "--quiet", "--collect", "--unit=u.service"]
    assert "--setenv=A=$1" in argv
    assert "--property=User=1000" in argv
    assert argv[argv.index("--") + 1 :] == ["sh", "-c", "echo $$HOME $${x}"]


def test_agent_command_and_boot_argv() -> None:
    cmd = agent_command(PROBE_BUSYBOX, "/.containersec/run/u", ["/bin/app", "x"])
    assert cmd[:4] == [PROBE_BUSYBOX, "sh", "-c", AGENT_SCRIPT]
    assert cmd[-3:] == ["/.containersec/run/u", "/bin/app", "x"]
    argv = nspawn_argv("m", Path("/s/rootfs"), "/probe", Path("/s/run"))
    for opt in (
        "--boot",
        "--private-users=pick",
        "--private-users-ownership=map",
        "--bind-ro=/probe:/.containersec",
        "--bind-ro=/s/run:/.containersec/run:idmap",
    ):
        assert opt in argv  # fmt: skip
    assert not any(a.startswith("--private-network") for a in argv)


# -- declared ----------------------------------------------------------------------------

# Recorded on systemd 252 (booted in nspawn) for a hardened unit, trimmed.
SHOW = """Id=containersec-1-systemd-run-2.service
MainPID=42
User=_du3caa77cc4a590cc6
Group=_du3caa77cc4a590cc6
DynamicUser=yes
CapabilityBoundingSet=
AmbientCapabilities=
NoNewPrivileges=yes
SystemCallFilter=_llseek accept accept4 access
ProtectSystem=strict
ReadOnlyPaths=
MemoryMax=67108864
TasksMax=32
CPUQuotaPerSecUSec=500ms
PrivateNetwork=yes
PrivateUsers=no
BindPaths=
BindReadOnlyPaths=/srv/data:/data:rbind /p:/.containersec:rbind
"""
ANALYZE_JSON = json.dumps([
    {"set": True, "name": "PrivateNetwork=", "json_field": "PrivateNetwork",
     "description": "Service has no access to the host's network", "exposure": None},
    {"set": False, "name": "SystemCallFilter=~@resources", "json_field":
     "SystemCallFilter_resources", "description": "...", "exposure": "0.2"},
    {"set": True, "name": "CapabilityBoundingSet=~CAP_(CHOWN|FSETID|SETFCAP)",
     "json_field": "CapabilityBoundingSet_CAP_CHOWN_CAP_FSETID_CAP_SETFCAP",
     "description": "...", "exposure": None},
    {"set": True, "name": "NoNewPrivileges=", "json_field": "NoNewPrivileges",
     "description": "...", "exposure": None},
])  # fmt: skip
ANALYZE_TEXT = (
    "  NAME  DESCRIPTION  EXPOSURE\n\n→ Overall exposure level for x.service: 3.7 OK 🙂\n"
)


def test_declared_from_show() -> None:
    analyze = decl.parse_analyze(ANALYZE_JSON, ANALYZE_TEXT)
    d = decl.declared_from_show(decl.parse_show(SHOW), analyze)
    assert d["user"] == "_du3caa77cc4a590cc6"
    assert d["dynamic_user"]
    assert d["cap_drop"] == sorted(caps.ALL_CAPS)
    assert d["cap_add"] == []
    assert d["seccomp"] == "custom"
    assert d["no_new_privileges"]
    assert d["read_only"]
    assert (d["memory"], d["pids_limit"], d["cpus"]) == (64 * 1024**2, 32, 0.5)
    assert d["network_mode"] == "none"
    assert d["userns_mode"] == "host"
    assert d["binds"] == ["/srv/data:/data:ro"]  # the probe folder is ours, not the unit's
    assert d["systemd_analyze"] is not None
    assert d["systemd_analyze"]["exposure"] == 3.7
    assert d["systemd_analyze"]["level"] == "OK"
    assert d["systemd_analyze"]["settings"][1]["exposure"] == 0.2


def test_declared_of_a_plain_unit() -> None:
    show = "SystemCallFilter=~\nCapabilityBoundingSet=cap_chown cap_kill\nMemoryMax=infinity\n"
    d = decl.declared_from_show(decl.parse_show(show + "CPUQuotaPerSecUSec=infinity\n"), None)
    assert d["seccomp"] == "unconfined"
    assert d["memory"] is None
    assert d["cpus"] is None
    assert d["capabilities"] == ["CAP_CHOWN", "CAP_KILL"]
    assert d["systemd_analyze"] is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("1s 500ms", 1.5), ("2s", 2.0), ("infinity", None), ("", None)],
)
def test_timespan(text: str, seconds: float | None) -> None:
    assert decl.timespan_seconds(text) == seconds


def test_parse_analyze_rejects_other_shapes() -> None:
    with pytest.raises(ValueError):
        decl.parse_analyze('{"a": 1}', "")
    assert decl.parse_analyze("", "")["exposure"] is None


# -- declared verdict vs observed --------------------------------------------------------


def analyzed(**changes: object) -> object:
    analyze = decl.parse_analyze(ANALYZE_JSON, ANALYZE_TEXT)
    return facts(declared={"systemd_analyze": analyze}, **changes)


def test_private_network_in_the_hosts_namespace_is_a_disagreement() -> None:
    f = analyzed(namespaces={"net": "host"}, no_new_privs=True,
                 capabilities=Capabilities((), (), (), (), ()))  # fmt: skip
    mm = analyze.mismatches(f)  # type: ignore[arg-type]
    assert mm == [Mismatch("PrivateNetwork=", "protected", "exposed", "systemd-analyze")]


def test_agreement_gives_nothing_and_unknown_stays_quiet() -> None:
    f = analyzed(namespaces={"net": "private"}, no_new_privs=True,
                 capabilities=Capabilities((), (), (), (), ()))  # fmt: skip
    assert analyze.mismatches(f) == []  # type: ignore[arg-type]
    assert analyze.mismatches(facts()) == []  # no systemd-analyze output at all


def test_capability_group_and_syscall_rules() -> None:
    f = analyzed(namespaces={"net": "private"}, no_new_privs=False,
                 operations={"mount_tmpfs": AccessResult(True)})  # fmt: skip
    names = {m.field for m in analyze.mismatches(f)}  # type: ignore[arg-type]
    # CAP_CHOWN is in Docker's bounding set; no_new_privs is off
    assert names == {"CapabilityBoundingSet=~CAP_(CHOWN|FSETID|SETFCAP)", "NoNewPrivileges="}
    disabled = analyzed(namespaces={"net": "private"}, seccomp="disabled", no_new_privs=True,
                        capabilities=Capabilities((), (), (), (), ()))  # fmt: skip
    mm = analyze.mismatches(disabled)  # type: ignore[arg-type]
    assert mm == []  # "@resources" is declared exposed: no filter agrees with that


def test_matrix_shows_the_declared_score_and_the_disagreements() -> None:
    unit = analyzed(runtime="systemd-run", namespaces={"net": "host"})
    unit = unit.__class__.from_dict(unit.to_dict())  # type: ignore[attr-defined]
    mm = Mismatch("PrivateNetwork=", "protected", "exposed", "systemd-analyze")
    from dataclasses import replace

    unit = replace(unit, mismatches=(mm,))
    m = report.from_facts("t", {"docker": facts(), "systemd-run": unit})
    rows = {(r.group, r.name): r for r in m.rows}
    score = rows[("score", "systemd-analyze exposure (declared)")]
    assert score.cells["systemd-run"].value == "3.7 OK"
    assert score.cells["docker"].value == "-"
    net = rows[("systemd-analyze", "PrivateNetwork=")].cells["systemd-run"]
    assert net.value == "exposed"
    assert net.mismatch == "declared protected"
    assert "PrivateNetwork=" in report.to_markdown(m)
