"""Command-line options, ``containersec_*`` ini keys, the hook spec, and typed Settings.

Cheap to import: the standard library, pytest and spec. Nothing here probes an engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import pytest

if TYPE_CHECKING:
    from ..runtimes.base import Runtime
    from ..spec import ContainerSpec

DEFAULT_IMAGE = "containersec/probe"
KEEP_CHOICES: tuple[str, ...] = ("never", "failed", "always")
REUSE_CHOICES: tuple[str, ...] = ("function", "class", "module", "session")
REPORT_SUFFIXES: tuple[str, ...] = (".json", ".md", ".html")
DEFAULT_PARALLEL = 4  # container starts at once: mostly waiting on engines, fine on 2 cores
Keep = Literal["never", "failed", "always"]
Reuse = Literal["function", "class", "module", "session"]
RuntimeFactory = Callable[[], "Runtime"]

MARKER_LINE = (
    "containersec(image=..., command=..., user=..., cap_add=[...], cap_drop=[...], "
    "privileged=False, seccomp='default', no_new_privileges=False, read_only=False, "
    "memory=None, cpus=None, pids_limit=None, userns=None, volumes=[...], network='none', "
    "env={...}, properties={...} (systemd-run unit properties), entrypoint=[...], "
    "group_add=[...], devices=[...], pid/ipc/uts='host', ulimits={...}, sysctls={...}, "
    "tmpfs=[...], unmask=False, gidmap=None, apparmor=None, label=[...], runtimes=[...]; "
    "or compose='compose.yaml', service='web' / kube='deploy.yaml', container='app' / "
    "quadlet='app.container' / unit='app.service' (paths relative to the test file)): "
    "the container that containersec_container starts for this "
    "test, and the runtimes it runs on (default: every selected runtime). Class- and "
    "module-level markers merge; the nearest wins per field."
)


class ContainersecHookSpecs:
    """Hooks other plugins and conftest.py files may implement."""

    @pytest.hookspec
    def pytest_containersec_runtime_factories(
        self, config: pytest.Config
    ) -> Mapping[str, RuntimeFactory | None] | None:
        """Extra (or replacement) runtimes: ``{name: factory}``; a factory returns an object
        satisfying the ``Runtime`` Protocol. A name that is also built in replaces the built-in
        adapter, and ``{name: None}`` removes it (the test suite uses both to run the plugin
        against fake engines only)."""
        raise NotImplementedError


def runtime_help() -> str:
    """The ``--containersec-runtime`` help: the registry's names (built-ins and installed
    packages'; the hook's come later, at configure time)."""
    from ..runtimes import registry

    entries = registry(refresh=True).values()  # a new session looks for installed ones again
    engines = [e.name for e in entries if e.kind == "engine"]
    manifest = [e.name for e in entries if e.kind == "manifest"]
    return (
        f"runtimes to run container tests on: {', '.join(engines)}; "
        f"{', '.join(manifest)} (kube= specs only); ENGINE:OCI variants such as docker:runsc "
        "(only when named; `containersec runtimes` lists them all) (default: every available "
        "one but the variants; a named runtime that is unavailable is a usage error)"
    )


def register(parser: pytest.Parser) -> None:
    """Add the ``--containersec-*`` options and their ``containersec_*`` ini defaults to
    ``parser``."""
    group = parser.getgroup("containersec", "container security assertions (pytest-containersec)")
    group.addoption(
        "--containersec-runtime",
        action="append",
        default=[],
        metavar="NAME[,NAME...]",
        help=runtime_help(),
    )
    group.addoption(
        "--containersec-image",
        default=None,
        metavar="IMAGE",
        help=f"image for markers that name none (default: {DEFAULT_IMAGE})",
    )
    group.addoption(
        "--containersec-keep",
        default=None,
        choices=KEEP_CHOICES,
        help="keep containers running after their scope: never (default), failed (those "
        "a failing test used), always; kept ones are reaped by the next session",
    )
    group.addoption(
        "--containersec-reuse",
        default=None,
        choices=REUSE_CHOICES,
        help="scope within which containers of an identical spec and runtime are shared "
        "instead of restarted (default: module; function = a fresh container per test)",
    )
    group.addoption(
        "--containersec-strict",
        action="store_true",
        default=None,
        help="fail the session (exit status 1) when a container test was skipped, e.g. "
        "because a runtime is unavailable or cannot express a spec field",
    )
    group.addoption(
        "--containersec-report",
        action="append",
        default=[],
        metavar="PATH",
        help="write the session's matrices (tests x runtimes, and facts x runtimes per "
        "container spec) to PATH: .json, .md or .html (repeatable)",
    )
    group.addoption(
        "--containersec-sarif",
        default=None,
        metavar="PATH",
        help="write failed container checks as SARIF 2.1.0 to PATH",
    )
    group.addoption(
        "--containersec-max-exposure",
        default=None,
        type=float,
        metavar="SCORE",
        help="fail the session when any container's exposure score (0.0 confined .. 10.0 "
        "host-equivalent) is above SCORE",
    )
    group.addoption(
        "--containersec-parallel",
        default=None,
        type=int,
        metavar="N",
        help="start (and stop) the containers a reuse scope's tests need N at a time, ahead "
        f"of the tests (default: {DEFAULT_PARALLEL}; 1 = one by one, when a test asks)",
    )
    parser.addini("containersec_runtime", "default for --containersec-runtime", default="")
    parser.addini("containersec_parallel", "default for --containersec-parallel", default="")
    parser.addini("containersec_image", "default for --containersec-image", default="")
    parser.addini("containersec_keep", "default for --containersec-keep", default="")
    parser.addini("containersec_reuse", "default for --containersec-reuse", default="")
    parser.addini(
        "containersec_strict", "default for --containersec-strict", type="bool", default=False
    )
    parser.addini("containersec_report", "default for --containersec-report", default="")
    parser.addini("containersec_sarif", "default for --containersec-sarif", default="")
    parser.addini("containersec_max_exposure", "default for --containersec-max-exposure",
                  default="")  # fmt: skip
    parser.addini(
        "containersec_policy_files",
        "glob patterns of policy files collected as tests",
        default="containersec*.yaml containersec*.yml",
    )


@dataclass(frozen=True)
class Settings:
    """The plugin's configuration, read once from options and ini keys."""

    runtimes: tuple[str, ...] | None  # None: every known runtime that is available
    image: str
    keep: Keep
    reuse: Reuse
    strict: bool
    report: tuple[Path, ...]
    sarif: Path | None = None
    max_exposure: float | None = None
    parallel: int = DEFAULT_PARALLEL

    @property
    def wants_facts(self) -> bool:
        """Reports or an exposure limit need a snapshot of every container."""
        return bool(self.report or self.sarif or self.max_exposure is not None)

    @property
    def runtimes_named(self) -> bool:
        """The user named the runtimes: an unavailable one is then a usage error."""
        return self.runtimes is not None


def split_names(values: list[str] | str) -> tuple[str, ...]:
    """``["docker,podman", "nspawn"]`` or ``"docker, podman"`` -> unique names, in order."""
    items = [values] if isinstance(values, str) else values
    out: dict[str, None] = {}
    for item in items:
        for part in item.replace(",", " ").split():
            out[part] = None
    return tuple(out)


def _choice(config: pytest.Config, option: str, ini: str, choices: tuple[str, ...]) -> str:
    value = config.getoption(option)
    if value is None:
        value = str(config.getini(ini)).strip() or choices[0]
    if value not in choices:
        raise pytest.UsageError(
            f"{ini} = {value!r} is not one of: {', '.join(choices)} (ini file or --{ini})"
        )
    return str(value)


def read_settings(config: pytest.Config) -> Settings:
    """Settings from the command line, falling back to ini keys; UsageError when invalid."""
    cli_runtimes = split_names(cast(list[str], config.getoption("containersec_runtime")))
    names = cli_runtimes or split_names(str(config.getini("containersec_runtime")))
    image = config.getoption("containersec_image") or str(config.getini("containersec_image"))
    keep = _choice(config, "containersec_keep", "containersec_keep", KEEP_CHOICES)
    reuse_default = ("module", *(c for c in REUSE_CHOICES if c != "module"))
    reuse = _choice(config, "containersec_reuse", "containersec_reuse", reuse_default)
    strict = config.getoption("containersec_strict")
    if strict is None:
        strict = bool(config.getini("containersec_strict"))
    reports = cast(list[str], config.getoption("containersec_report")) or split_names(
        str(config.getini("containersec_report"))
    )
    report = tuple(_path(config, r, "--containersec-report", REPORT_SUFFIXES) for r in reports)
    sarif_s = config.getoption("containersec_sarif") or str(config.getini("containersec_sarif"))
    sarif = _path(config, sarif_s, "--containersec-sarif", (".sarif", ".json")) if sarif_s else None
    limit = config.getoption("containersec_max_exposure")
    if limit is None and str(config.getini("containersec_max_exposure")).strip():
        try:
            limit = float(str(config.getini("containersec_max_exposure")))
        except ValueError:
            raise pytest.UsageError("containersec_max_exposure must be a number") from None
    if limit is not None and not 0.0 <= limit <= 10.0:
        raise pytest.UsageError("--containersec-max-exposure must be between 0.0 and 10.0")
    parallel = config.getoption("containersec_parallel")
    if parallel is None:
        text = str(config.getini("containersec_parallel")).strip()
        if text and not text.isdigit():
            raise pytest.UsageError(f"containersec_parallel = {text!r} is not a whole number")
        parallel = int(text) if text else DEFAULT_PARALLEL
    if not 1 <= parallel <= 64:
        raise pytest.UsageError("--containersec-parallel must be between 1 and 64")
    return Settings(
        runtimes=names or None,
        image=image.strip() or DEFAULT_IMAGE,
        keep=cast(Keep, keep),
        reuse=cast(Reuse, reuse),
        strict=bool(strict),
        report=report,
        sarif=sarif,
        max_exposure=limit,
        parallel=int(parallel),
    )


def _path(config: pytest.Config, value: str, option: str, suffixes: tuple[str, ...]) -> Path:
    path = Path(value)
    if not path.is_absolute():
        path = Path(config.invocation_params.dir) / path
    if path.suffix.lower() not in suffixes:
        raise pytest.UsageError(
            f"{option}={value}: the file name must end in {', '.join(suffixes)} "
            "(the format follows the suffix)"
        )
    return path


SETTINGS_KEY = pytest.StashKey[Settings]()


def settings(config: pytest.Config) -> Settings:
    """The session's Settings (read and stashed on first use)."""
    found = config.stash.get(SETTINGS_KEY, None)
    if found is None:
        found = config.stash[SETTINGS_KEY] = read_settings(config)
    return found


def reuse_scope(fixture_name: str, config: pytest.Config) -> Reuse:
    """Dynamic scope of the container pool fixture (``--containersec-reuse``)."""
    return settings(config).reuse


# -- the containersec marker ---------------------------------------------------------


def marker_fields(node: pytest.Item | pytest.Function) -> dict[str, Any]:
    """The merged kwargs of every containersec marker on ``node``; the nearest wins."""
    merged: dict[str, Any] = {}
    for mark in reversed(list(node.iter_markers("containersec"))):
        merged.update(mark.kwargs)
    return merged


def marker_errors(node: pytest.Item, known: tuple[str, ...]) -> list[str]:
    """Usage errors of the node's containersec markers (empty list when valid)."""
    from ..sources import ALL_KEYS
    from ..spec import SPEC_FIELDS

    errors = []
    for mark in node.iter_markers("containersec"):
        if mark.args:
            errors.append(f"positional arguments {mark.args!r} (use field=value)")
        for key in mark.kwargs:
            if key not in SPEC_FIELDS and key != "runtimes" and key not in ALL_KEYS:
                errors.append(
                    f"unknown field {key!r} (known: {', '.join(SPEC_FIELDS)}, runtimes, "
                    f"{', '.join(ALL_KEYS)})"
                )
    fields = marker_fields(node)
    names = fields.pop("runtimes", None)
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            errors.append(f"runtimes={names!r}: expected a list of runtime names")
        else:
            unknown = [n for n in names if n not in known]
            if unknown:
                errors.append(f"runtimes: unknown {unknown!r} (known: {', '.join(known)})")
    if not errors:
        try:
            item_spec(node, DEFAULT_IMAGE)
        except _SourceUsage as exc:
            errors += exc.errors
        except (ValueError, TypeError) as exc:  # SpecError and SourceError are ValueErrors
            errors.append(str(exc))
    test = node.nodeid.partition("[")[0]
    return [f"{test}: @pytest.mark.containersec: {e}" for e in errors]


class _SourceUsage(ValueError):
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors))


def item_spec(node: pytest.Item, image: str) -> ContainerSpec:
    """The marker's spec; with ``compose=``/``kube=``/``quadlet=``/``unit=`` (a path
    relative to the test file), the file's spec with the marker's own fields on top."""
    from .. import sources
    from ..spec import SPEC_FIELDS, ContainerSpec

    merged = marker_fields(node)
    fields = {k: v for k, v in merged.items() if k in SPEC_FIELDS}
    loaded, errors = sources.from_fields(merged, Path(str(node.path)).parent)
    if errors:
        raise _SourceUsage(errors)
    if loaded is not None:
        return loaded.spec.replace(**fields) if fields else loaded.spec
    fields.setdefault("image", image)
    return ContainerSpec(**fields)
