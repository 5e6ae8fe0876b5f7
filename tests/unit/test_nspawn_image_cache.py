"""nspawn's rootfs cache (shared by lxc, containerd and portable): one entry per image
name, exported again when the store's image of that name changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_containersec.runtimes.nspawn import nspawn_image as images
from pytest_containersec.spec import ContainerSpec


def test_cache_keys_differ_for_names_that_spell_alike() -> None:
    names = ["my/app:1", "my_app:1", "my:app_1", "my/app_1", "my_app_1", "my/app/1"]
    keys = [images.cache_key(n) for n in names]
    assert len(set(keys)) == len(names)
    assert all("/" not in k and ":" not in k for k in keys)
    # names the setup writes into the cache keep their plain spelling
    assert images.cache_key("containersec/nginx") == "containersec_nginx"
    assert images.cache_key("systemd-bookworm-container") == "systemd-bookworm-container"


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The image ids the stores report (``docker:...`` / ``podman:...`` by image name)."""
    ids: dict[str, str] = {}

    def store_id(image: str, store: str | None) -> str | None:
        found = ids.get(image)
        if found is None or (store is not None and not found.startswith(store + ":")):
            return None
        return found

    def export(image: str, dest: Path, runtime: str) -> None:
        (dest / "rootfs").mkdir()
        (dest / "rootfs" / "which").write_text(ids[image])
        (dest / "config.json").write_text(json.dumps({"Env": [f"ID={ids[image]}"]}))
        (dest / "image-id").write_text(ids[image])
        (dest / "format").write_text(images.EXPORT_FORMAT + "\n")

    monkeypatch.setattr(images, "_store_id", store_id)
    monkeypatch.setattr(images, "_export", export)
    return ids


def test_a_rebuilt_image_is_exported_again(tmp_path: Path, store: dict[str, str]) -> None:
    store["app:1"] = "docker:sha256:aaa"
    root, env = images.rootfs("app:1", tmp_path, "nspawn")
    assert (root / "which").read_text() == "docker:sha256:aaa"
    assert env == {"ID": "docker:sha256:aaa"}
    again, _ = images.rootfs("app:1", tmp_path, "nspawn")
    assert again == root
    assert (again / "which").read_text() == "docker:sha256:aaa"  # unchanged: not re-exported

    store["app:1"] = "docker:sha256:bbb"  # rebuilt under the same name
    root, env = images.rootfs("app:1", tmp_path, "nspawn")
    assert (root / "which").read_text() == "docker:sha256:bbb"
    assert env == {"ID": "docker:sha256:bbb"}
    assert sorted(
        p.name for p in (tmp_path / "images").iterdir() if not p.name.endswith(".lock")
    ) == [images.cache_key("app:1")]  # the old entry is gone, no temporary folder is left


def test_an_entry_whose_store_lost_the_image_is_kept(tmp_path: Path, store: dict[str, str]) -> None:
    store["app"] = "podman:sha256:ccc"
    images.rootfs("app", tmp_path, "nspawn")
    del store["app"]
    again, _ = images.rootfs("app", tmp_path, "nspawn")
    assert (again / "which").read_text() == "podman:sha256:ccc"


def test_setup_made_entries_are_the_setups(tmp_path: Path, store: dict[str, str]) -> None:
    entry = tmp_path / "images" / images.cache_key("containersec/nginx")
    (entry / "rootfs").mkdir(parents=True)
    (entry / "rootfs" / "which").write_text("setup")
    (entry / "stamp").write_text("recipe-1\n")
    store["containersec/nginx"] = "docker:sha256:ddd"
    root, _ = images.rootfs("containersec/nginx", tmp_path, "nspawn")
    assert (root / "which").read_text() == "setup"


def test_an_older_entry_without_an_id_is_checked(tmp_path: Path, store: dict[str, str]) -> None:
    entry = tmp_path / "images" / images.cache_key("app")
    (entry / "rootfs").mkdir(parents=True)
    (entry / "rootfs" / "which").write_text("old version's export")
    store["app"] = "docker:sha256:eee"
    root, _ = images.rootfs("app", tmp_path, "nspawn")
    assert (root / "which").read_text() == "docker:sha256:eee"


def test_an_export_of_an_older_format_is_exported_again(
    tmp_path: Path, store: dict[str, str]
) -> None:
    """Entries exported before the file capabilities were kept (no ``format``) are stale,
    even for the same image id: they may lack a setcap'd binary's capability."""
    store["app"] = "docker:sha256:fff"
    entry = tmp_path / "images" / images.cache_key("app")
    (entry / "rootfs").mkdir(parents=True)
    (entry / "rootfs" / "which").write_text("exported without xattrs")
    (entry / "image-id").write_text("docker:sha256:fff")
    root, _ = images.rootfs("app", tmp_path, "nspawn")
    assert (root / "which").read_text() == "docker:sha256:fff"
    assert (entry / "format").read_text().strip() == images.EXPORT_FORMAT


# -- the image config as Docker applies it (nspawn, lxc, Incus, containerd) ---------------


@pytest.mark.parametrize(
    ("spec", "config", "user", "command"),
    [
        # a given command replaces CMD, the ENTRYPOINT stays in front (postgres' setpriv)
        (ContainerSpec(command=["postgres"]), {"Entrypoint": ["/entry"], "Cmd": ["x"]},
         None, ("/entry", "postgres")),
        # no command: the idle payload, never the image's entrypoint
        (ContainerSpec(), {"Entrypoint": ["/entry"]}, None, ()),
        # the image's USER when the spec names none; the spec's own wins
        (ContainerSpec(), {"User": "nonroot:nonroot"}, "nonroot:nonroot", ()),
        (ContainerSpec(user="1000"), {"User": "nonroot"}, "1000", ()),
        # malformed or empty fields change nothing
        (ContainerSpec(command=["a"]), {"Entrypoint": "sh -c", "User": ""}, None, ("a",)),
    ],
)  # fmt: skip
def test_with_image_config_follows_dockers_rules(
    spec: ContainerSpec, config: dict[str, object], user: str | None, command: tuple[str, ...]
) -> None:
    out = images.with_image_config(spec, config)
    assert out.user == user
    assert tuple(out.command) == command


def test_image_config_reads_the_cache_record_and_tolerates_junk(tmp_path: Path) -> None:
    entry = tmp_path / "images" / images.cache_key("x/y")
    entry.mkdir(parents=True)
    assert images.image_config("x/y", tmp_path) is None
    (entry / "config.json").write_text('{"User": "u"}')
    assert images.image_config("x/y", tmp_path) == {"User": "u"}
    (entry / "config.json").write_text("[1]")
    assert images.image_config("x/y", tmp_path) is None
