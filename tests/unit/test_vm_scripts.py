"""The pure parts of the VM tier's runner (scripts/vm): recipe hash, mirror, qemu argv."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

VM_DIR = Path(__file__).resolve().parents[2] / "scripts" / "vm"


def _load(name: str) -> ModuleType:
    if str(VM_DIR) not in sys.path:
        sys.path.insert(0, str(VM_DIR))
    spec = importlib.util.spec_from_file_location(f"containersec_vm_{name}", VM_DIR / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


image = _load("image")
vm = _load("vm")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_recipe_hash_is_stable_and_ignores_key_order() -> None:
    rec = image.recipe(PYPROJECT)
    again = dict(reversed(list(image.recipe(PYPROJECT).items())))
    assert image.recipe_hash(rec) == image.recipe_hash(again)
    assert len(image.recipe_hash(rec)) == 16


@pytest.mark.parametrize("field", ["packages", "python", "suite", "builder"])
def test_recipe_hash_changes_with_each_ingredient(field: str) -> None:
    rec = image.recipe(PYPROJECT)
    changed = {**rec, field: [*rec[field], "x"] if isinstance(rec[field], list) else "x"}
    assert image.recipe_hash(changed) != image.recipe_hash(rec)


def test_recipe_has_the_projects_dependencies_and_hatchling() -> None:
    reqs = image.python_requirements(PYPROJECT)
    for name in ("pytest>=7.4", "docker>=7.0", "pytest-xdist>=3.5", "hatchling", "editables"):
        assert name in reqs
    assert reqs == sorted(set(reqs))


def test_recipe_lists_the_runtimes_and_no_browser() -> None:
    for pkg in ("docker.io", "podman", "systemd-container", "rootlesskit", "linux-image-amd64"):
        assert pkg in image.PACKAGES
    assert "chromium" not in image.PACKAGES


def test_builder_hash_ignores_comments_and_formatting() -> None:
    src = (VM_DIR / "image.py").read_text()
    reformatted = "# a comment\n" + src.replace("SUITE = ", "SUITE  =  ", 1)
    assert image.builder_ast(reformatted) == image.builder_ast()


def test_builder_hash_follows_the_build_steps_not_the_caching() -> None:
    src = (VM_DIR / "image.py").read_text()
    caching = src.replace("One build at a time", "One build at a time, always")
    assert image.builder_ast(caching) == image.builder_ast()
    packages = src.replace('"kmod",', '"kmod",\n    "strace",', 1)
    assert image.builder_ast(packages) != image.builder_ast()
    steps = src.replace('"--variant=minbase"', '"--variant=buildd"', 1)
    assert image.builder_ast(steps) != image.builder_ast()


@pytest.mark.parametrize(
    ("texts", "want"),
    [
        (
            [
                "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n",
                "Types: deb\nURIs: http://deb.debian.org/debian-security\n",
            ],
            "http://deb.debian.org/debian",
        ),
        (["deb http://mirror.example/debian/ bookworm main\n"], "http://mirror.example/debian"),
        (
            ["deb [signed-by=/k.gpg] http://m.example/debian bookworm main\n"],
            "http://m.example/debian",
        ),
        (
            ["deb https://packages.cloud.google.com/apt cloud-sdk main\n# deb http://x/debian a\n"],
            None,
        ),
        ([""], None),
    ],
)
def test_debian_mirror_from_apt_sources(texts: list[str], want: str | None) -> None:
    assert image.debian_mirror(texts) == want


def test_free_space_check_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(image.BuildError, match="disk space") as info:
        image.check_free_space(tmp_path, need=1 << 62)
    assert str(tmp_path) in str(info.value)


def _cfg(accel: str) -> object:
    return vm.VMConfig(image=Path("/img"), src=Path("/src"), results=Path("/res"), accel=accel)


def test_qemu_argv_tcg_has_no_network_a_snapshot_and_a_read_only_checkout() -> None:
    argv = vm.qemu_argv(_cfg("tcg"))
    assert argv[0] == "qemu-system-x86_64"
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    assert argv[argv.index("-nic") + 1] == "none"
    assert "-snapshot" in argv
    assert "-no-reboot" in argv
    shares = [argv[i + 1] for i, a in enumerate(argv) if a == "-virtfs"]
    assert "local,path=/src,mount_tag=src,security_model=none,readonly=on" in shares
    assert "local,path=/res,mount_tag=results,security_model=none" in shares
    assert argv[argv.index("-kernel") + 1] == "/img/vmlinuz"
    assert "root=/dev/vda" in argv[argv.index("-append") + 1]
    assert all(isinstance(a, str) for a in argv)


def test_service_images_are_shared_read_only_when_the_host_has_them(tmp_path: Path) -> None:
    cfg = vm.VMConfig(image=Path("/img"), src=Path("/src"), results=Path("/res"), accel="tcg",
                      service_images=tmp_path)  # fmt: skip
    shares = [a for a in vm.qemu_argv(cfg) if a.startswith("local,")]
    assert f"local,path={tmp_path},mount_tag=service,security_model=none,readonly=on" in shares
    gone = vm.VMConfig(image=Path("/img"), src=Path("/src"), results=Path("/res"), accel="tcg",
                       service_images=tmp_path / "none")  # fmt: skip
    assert not any("mount_tag=service" in a for a in vm.qemu_argv(gone))


def test_qemu_argv_kvm_and_warmup() -> None:
    argv = vm.qemu_argv(_cfg("kvm"), warmup=True)
    assert argv[argv.index("-accel") + 1] == "kvm"
    assert "-snapshot" not in argv  # the warm-up boot writes its caches to the new disk
    assert "-virtfs" not in argv
    assert "containersec.warmup" in argv[argv.index("-append") + 1]


def test_guest_env_passes_ci_and_test_args_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("CONTAINERSEC_TEST_ARGS", "-k docker")
    monkeypatch.setenv("SECRET_TOKEN", "x")
    env = vm.guest_env()
    assert env["CI"] == "true"
    assert env["CONTAINERSEC_TEST_ARGS"] == "-k docker"
    assert "SECRET_TOKEN" not in env


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("abi <abi/4.0>,\nprofile crun /usr/bin/crun flags=(unconfined) {\n}\n", "/usr/bin/crun"),
        (
            "#include <tunables/global>\n/usr/bin/busybox flags=(complain) {\n}\n",
            "/usr/bin/busybox",
        ),
        ("profile runc /usr/{bin,sbin}/runc flags=(unconfined) {\n}\n", "/usr/{bin,sbin}/runc"),
        ("# only abstractions\n", None),
    ],
)
def test_apparmor_profile_attachment(text: str, want: str | None) -> None:
    assert image.profile_attachment(text) == want


def test_profiles_of_absent_programs_are_disabled_only(tmp_path: Path) -> None:
    aa = tmp_path / "etc/apparmor.d"
    aa.mkdir(parents=True)
    (tmp_path / "usr/bin").mkdir(parents=True)
    (tmp_path / "usr/bin/crun").write_text("")
    (aa / "crun").write_text("profile crun /usr/bin/crun flags=(unconfined) {\n}\n")
    (aa / "brave").write_text("profile brave /opt/brave.com/brave/brave flags=(unconfined) {\n}\n")
    (aa / "runc").write_text("profile runc /usr/{bin,sbin}/runc flags=(unconfined) {\n}\n")
    assert image.disable_absent_apparmor_profiles(tmp_path) == ["brave"]
    assert (aa / "disable/brave").is_symlink()
    assert not (aa / "disable/crun").exists()


def test_the_stores_in_the_recipe_follow_the_service_tarballs_stamps(tmp_path: Path) -> None:
    """The image's stores hold the service images: a new tarball recipe rebuilds it."""
    assert image.service_stamps(None) == {}
    assert image.service_stamps(tmp_path / "missing") == {}
    (tmp_path / "nginx.tar").write_bytes(b"")
    (tmp_path / "nginx.stamp").write_text("abc\n")
    (tmp_path / "half.tar").write_bytes(b"")  # no stamp: not a finished tarball
    assert image.service_stamps(tmp_path) == {"nginx": "abc"}
    before = image.recipe_hash(image.recipe(PYPROJECT, tmp_path))
    assert before != image.recipe_hash(image.recipe(PYPROJECT))
    (tmp_path / "nginx.stamp").write_text("abd\n")
    assert image.recipe_hash(image.recipe(PYPROJECT, tmp_path)) != before


def test_the_stores_in_the_recipe_follow_the_setup_files_that_fill_them(tmp_path: Path) -> None:
    checkout = PYPROJECT.parent
    for name in image.STORE_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes((checkout / name).read_bytes())
    same = image.stores_recipe(tmp_path, None)
    assert same == image.stores_recipe(checkout, None)
    with (tmp_path / "scripts/setup.d/55-service-images.sh").open("a") as fh:
        fh.write("# changed\n")
    assert image.stores_recipe(tmp_path, None)["setup"] != same["setup"]
