"""The containersec marker: registration, validation, merging, runtimes=[...]."""

from __future__ import annotations

import pytest

from tests.plugin.helpers import FakeEnv


def test_marker_is_registered_with_its_signature(fake: FakeEnv) -> None:
    out = fake.run("--markers").stdout.str()
    assert (
        "@pytest.mark.containersec(image=..., command=..., user=..., cap_add=[...], "
        "cap_drop=[...], privileged=False, seccomp='default', no_new_privileges=False, "
        "read_only=False, memory=None, cpus=None, pids_limit=None, userns=None, volumes=[...], "
        "network='none', env={...}, properties={...} (systemd-run unit properties), "
        "entrypoint=[...], group_add=[...], devices=[...], pid/ipc/uts='host', ulimits={...}, "
        "sysctls={...}, tmpfs=[...], unmask=False, gidmap=None, apparmor=None, label=[...], "
        "runtimes=[...]; or compose='compose.yaml', service='web' / kube='deploy.yaml', "
        "container='app' / quadlet='app.container' / unit='app.service' (paths relative to "
        "the test file)): the container that containersec_container starts for this test" in out
    )


def test_strict_markers_accept_it(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import pytest
        @pytest.mark.containersec(user="1000")
        def test_a(containersec_container): pass
        """
    )
    fake.run("--strict-markers", "--containersec-runtime=docker").assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("marker", "error"),
    [
        ('cap_drop=["ALL"], capdrop=["ALL"]',
         "unknown field 'capdrop' (known: image, command, user, cap_add, cap_drop, privileged, "
         "seccomp, no_new_privileges, read_only, memory, cpus, pids_limit, userns, volumes, "
         "network, env, properties, entrypoint, group_add, devices, pid, ipc, uts, ulimits, "
         "sysctls, tmpfs, unmask, gidmap, apparmor, label, portable_profile, runtimes, "
         "compose, kube, quadlet, unit, service, container)"),
        ('"myapp:1.4"', "positional arguments ('myapp:1.4',) (use field=value)"),
        ('memory="lots"', "invalid memory='lots': expected a size like 64m, 1g or a byte count"),
        ('runtimes="docker"', "runtimes='docker': expected a list of runtime names"),
        ('runtimes=["dokcer"]',
         "runtimes: unknown ['dokcer'] (known: docker, podman, podman-rootless, nspawn)"),
    ],
)  # fmt: skip
def test_invalid_marker_is_a_usage_error_naming_the_test(
    fake: FakeEnv, marker: str, error: str
) -> None:
    path = fake.pytester.makepyfile(
        f"""
        import pytest

        class TestGroup:
            @pytest.mark.containersec({marker})
            def test_bad(self, containersec_container): pass

        def test_good(containersec_container): pass
        """
    )
    r = fake.run()
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    expected = f"ERROR: {path.name}::TestGroup::test_bad: @pytest.mark.containersec: {error}"
    assert [line for line in r.stderr.lines if line] == [expected]  # once, not per runtime
    assert fake.events("start") == []


def test_invalid_marker_on_a_test_without_container_fixtures(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import pytest
        @pytest.mark.containersec(usr="1000")
        def test_plain(): pass
        """
    )
    r = fake.run()
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(
        ["ERROR: *::test_plain: @pytest.mark.containersec: unknown field 'usr'*"]
    )


def test_class_and_module_markers_merge_nearest_wins(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.containersec(user="1", memory="64m", image="mod:1")

        @pytest.mark.containersec(user="2", pids_limit=10)
        class TestMerged:
            @pytest.mark.containersec(read_only=True, pids_limit=20)
            def test_function(self, containersec_container):
                spec = containersec_container.spec
                assert (spec.image, spec.user, spec.memory, spec.pids_limit, spec.read_only) == (
                    "mod:1", "2", 64 * 1024 * 1024, 20, True)

            def test_class(self, containersec_container):
                assert containersec_container.spec.user == "2"
                assert containersec_container.spec.pids_limit == 10

        def test_module(containersec_container):
            assert containersec_container.spec.user == "1"
            assert containersec_container.spec.pids_limit is None
        """
    )
    fake.run("--containersec-runtime=docker").assert_outcomes(passed=3)


def test_runtimes_in_the_marker_narrow_the_parametrization(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import pytest

        @pytest.mark.containersec(runtimes=["podman", "nspawn"])
        def test_some(containersec_container): pass

        @pytest.mark.containersec(runtimes=["podman-rootless"])
        def test_unselected(containersec_runtime): pass
        """
    )
    r = fake.run("-v", "-rs", "--containersec-runtime=docker,podman,nspawn")
    r.stdout.fnmatch_lines(
        [
            "*::test_some?podman? PASSED*",
            "*::test_some?nspawn? PASSED*",
            "*::test_unselected?no-runtime? SKIPPED*",
            "SKIPPED [[]1[]] *: none of them is selected (docker, podman, nspawn)",
        ]
    )
    assert "containersec(runtimes=['podman-rootless']): none of them" in r.stdout.str()
    r.assert_outcomes(passed=2, skipped=1)
    assert "test_some[docker]" not in r.stdout.str()


def test_runtime_fixture_alone_is_parametrized(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        def test_rt(containersec_runtime):
            assert containersec_runtime.name in ("docker", "nspawn")
        """
    )
    r = fake.run("-v", "--containersec-runtime=docker,nspawn")
    r.stdout.fnmatch_lines(["*test_rt?docker? PASSED*", "*test_rt?nspawn? PASSED*"])


def test_other_parametrization_combines(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import pytest

        @pytest.mark.parametrize("n", [1, 2])
        def test_p(containersec_container, n): pass
        """
    )
    r = fake.run("-v", "--containersec-runtime=docker,podman-rootless")
    r.assert_outcomes(passed=4)
    r.stdout.fnmatch_lines(
        [
            "test                                               docker  podman-rootless",
            "test_other_parametrization_combines.py::test_p[[]1]  PASS    PASS",
            "test_other_parametrization_combines.py::test_p[[]2]  PASS    PASS",
        ],
        consecutive=True,
    )


def test_factory_rejects_unknown_fields(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import pytest

        def test_f(containersec_start):
            with pytest.raises(TypeError) as exc:
                containersec_start(image="x", capdrop=["ALL"], usr="1")
            assert str(exc.value).startswith(
                "containersec_start(): unknown spec field(s) capdrop, usr (known: image, ")
        """
    )
    fake.run("--containersec-runtime=docker").assert_outcomes(passed=1)


def test_factory_starts_several_and_stops_them_at_teardown(fake: FakeEnv) -> None:
    fake.pytester.makepyfile(
        """
        import pytest

        @pytest.mark.containersec(user="1000")
        def test_f(containersec_container, containersec_start):
            a = containersec_start(user="1000")
            b = containersec_start(user="1000")
            c = containersec_start(image="other:1", cap_drop=["ALL"])
            assert len({containersec_container.id, a.id, b.id, c.id}) == 4
            assert c.spec.image == "other:1" and c.spec.cap_drop == ("ALL",)
            assert a.spec.image == "containersec/probe"
        """
    )
    fake.run("--containersec-runtime=docker").assert_outcomes(passed=1)
    assert len(fake.events("start")) == 4
    assert len(fake.events("stop")) == 4


COMPOSE = """services:
  web:
    image: containersec/httpd
    user: "1000"
    cap_drop: [ALL]
    mem_limit: 64m
    ports: ["80:80"]
"""


def test_compose_marker_relative_to_the_test_file(fake: FakeEnv) -> None:
    sub = fake.pytester.mkdir("svc")
    (sub / "compose.yaml").write_text(COMPOSE)
    (sub / "test_c.py").write_text(
        "import pytest\n"
        "@pytest.mark.containersec(compose='compose.yaml', service='web', read_only=True)\n"
        "def test_web(containersec_container): pass\n"
    )
    fake.run("--containersec-runtime=docker").assert_outcomes(passed=1)
    (started,) = fake.events("start")
    spec = started["spec"]
    assert (spec["image"], spec["user"], spec["cap_drop"]) == (
        "containersec/httpd",
        "1000",
        ["ALL"],
    )
    assert (spec["memory"], spec["read_only"]) == (64 * 2**20, True)  # the marker's on top
    assert spec["origin"] == f"compose:{sub / 'compose.yaml'}:web"


@pytest.mark.parametrize(
    ("marker", "error"),
    [
        ("compose='compose.yaml', service='nope'",
         "compose.yaml:1: services: no service 'nope' (services: web)"),
        ("compose='compose.yaml'", "compose.yaml: service: name the compose service to run"),
        ("service='web'", "service= needs compose= or kube="),
        ("compose='missing.yaml', service='web'", "missing.yaml: compose: No such file or directory"),
    ],
)  # fmt: skip
def test_bad_deployment_file_is_a_usage_error_naming_file_and_line(
    fake: FakeEnv, marker: str, error: str
) -> None:
    (fake.pytester.path / "compose.yaml").write_text(COMPOSE)
    fake.pytester.makepyfile(
        f"""
        import pytest

        @pytest.mark.containersec({marker})
        def test_bad(containersec_container): pass
        """
    )
    r = fake.run()
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert error in r.stderr.str()
    assert fake.events("start") == []
