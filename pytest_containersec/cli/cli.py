"""The ``containersec`` command: runtimes, facts, reap (compare and check build on these)."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import (
    ContainerSecError,
    ImageNotFound,
    RuntimeUnavailable,
    SourceError,
    SpecError,
    UnknownRuntime,
    UnsupportedSpec,
)
from ..spec import DEFAULT_IMAGE, PORTABLE_PROFILES, ContainerSpec

if TYPE_CHECKING:
    from .runner import Observation

# 1 is for findings only: an error that stopped a verdict is 4 (README "Command line")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_ERROR = 0, 1, 2, 3, 4


def add_spec_flags(p: argparse.ArgumentParser) -> None:
    """The run-spec flags, spelled as docker spells them."""
    p.add_argument("--user", "-u", help="NAME, UID or UID:GID")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP")
    p.add_argument("--cap-drop", action="append", default=[], metavar="CAP")
    p.add_argument("--privileged", action="store_true")
    p.add_argument("--seccomp", default="default", help="default, unconfined or a profile path")
    p.add_argument("--no-new-privileges", action="store_true")
    p.add_argument("--read-only", action="store_true")
    p.add_argument("--memory", "-m", help="e.g. 64m")
    p.add_argument("--cpus", type=float)
    p.add_argument("--pids-limit", type=int)
    p.add_argument("--userns", help="host, auto, keep-id or INSIDE:OUTSIDE:COUNT[,...]")
    p.add_argument("--volume", "-v", action="append", default=[], metavar="SRC:DST[:ro]")
    p.add_argument("--network", default="none", choices=["none", "host"])
    p.add_argument("--env", "-e", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--entrypoint", help="replace the image's entrypoint (one word)")
    p.add_argument("--group-add", action="append", default=[], metavar="GROUP")
    p.add_argument("--device", action="append", default=[], metavar="HOST[:CONTAINER][:rwm]")
    p.add_argument("--pid", choices=["private", "host"], default="private")
    p.add_argument("--ipc", choices=["private", "host"], default="private")
    p.add_argument("--uts", choices=["private", "host"], default="private")
    p.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]")
    p.add_argument("--sysctl", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTIONS]")
    p.add_argument("--gidmap", metavar="INSIDE:OUTSIDE:COUNT", help="gid maps apart from --userns")
    p.add_argument(
        "--portable-profile", choices=list(PORTABLE_PROFILES), default="default",
        help="the portable runtime's portablectl attach --profile",
    )  # fmt: skip
    p.add_argument(
        "--security-opt",
        action="append",
        default=[],
        metavar="OPT",
        help="systempaths=unconfined, apparmor=PROFILE, label=OPT, seccomp=..., no-new-privileges",
    )
    src = p.add_argument_group("deployment files (spec flags given too apply on top)")
    src.add_argument("--compose", metavar="FILE", help="a compose file (with --service)")
    src.add_argument("--service", metavar="NAME")
    src.add_argument("--kube", metavar="FILE", help="a Kubernetes manifest (with --container)")
    src.add_argument("--container", metavar="NAME")
    src.add_argument("--quadlet", metavar="FILE", help="a Podman quadlet .container file")
    src.add_argument("--unit", metavar="FILE", help="a systemd unit file (for systemd-run)")
    p.add_argument(
        "--probe-access",
        action="append",
        default=[],
        metavar="PATH:MODE",
        help="also attempt this access (mode r, w or x); repeatable",
    )
    p.add_argument("image", nargs="?", default=DEFAULT_IMAGE)
    p.add_argument("command", nargs=argparse.REMAINDER, help="the main process (default: idle)")


def _security_opts(opts: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    labels: list[str] = []
    for opt in opts:
        key, _, arg = opt.replace("=", ":", 1).partition(":")
        if key == "systempaths" and arg == "unconfined":
            out["unmask"] = True
        elif key == "apparmor" and arg:
            out["apparmor"] = arg
        elif key == "label" and arg:
            labels.append(arg.replace("=", ":", 1))
        elif key == "seccomp" and arg:
            out["seccomp"] = arg
        elif key == "no-new-privileges" and arg in ("", "true"):
            out["no_new_privileges"] = True
        else:
            raise SpecError("security_opt", opt, "unsupported option")
    if labels:
        out["label"] = tuple(labels)
    return out


def spec_from_args(a: argparse.Namespace) -> ContainerSpec:
    """The spec of the flags, or of the deployment file with the explicit flags on top."""
    spec = _flags_spec(a)
    kinds = [k for k in ("compose", "kube", "quadlet", "unit") if getattr(a, k, None)]
    if not kinds:
        if a.service or a.container:
            raise SpecError("service", a.service or a.container, "needs --compose or --kube")
        return spec
    from .. import sources

    if len(kinds) > 1:
        raise SpecError(kinds[1], getattr(a, kinds[1]), f"name one file, not also --{kinds[0]}")
    if a.image != DEFAULT_IMAGE:
        raise SpecError("image", a.image, f"the image comes from --{kinds[0]}")
    name = a.service if kinds[0] == "compose" else a.container if kinds[0] == "kube" else None
    loaded = sources.load(kinds[0], getattr(a, kinds[0]), name)
    for note in loaded.notes:
        print(f"containersec: note: {note}", file=sys.stderr)
    explicit = {k: v for k, v in spec.non_default_fields().items() if k != "image"}
    return loaded.spec.replace(**explicit) if explicit else loaded.spec


def _flags_spec(a: argparse.Namespace) -> ContainerSpec:
    env = []
    for item in a.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError("env", item, "expected KEY=VALUE")
        env.append((key, value))
    fields: dict[str, Any] = dict(
        image=a.image,
        command=tuple(a.command),
        user=a.user,
        cap_add=tuple(a.cap_add),
        cap_drop=tuple(a.cap_drop),
        privileged=a.privileged,
        seccomp=a.seccomp,
        no_new_privileges=a.no_new_privileges,
        read_only=a.read_only,
        memory=a.memory,
        cpus=a.cpus,
        pids_limit=a.pids_limit,
        userns=a.userns,
        volumes=tuple(a.volume),
        network=a.network,
        env=tuple(env),
        entrypoint=(a.entrypoint,) if a.entrypoint is not None else None,
        group_add=tuple(a.group_add),
        devices=tuple(a.device),
        pid=a.pid,
        ipc=a.ipc,
        uts=a.uts,
        ulimits=tuple(a.ulimit),
        sysctls=tuple(a.sysctl),
        tmpfs=tuple(a.tmpfs),
        gidmap=a.gidmap,
        portable_profile=a.portable_profile,
    )
    fields.update(_security_opts(a.security_opt))
    return ContainerSpec(**fields)


def cmd_runtimes(a: argparse.Namespace) -> int:
    """``containersec runtimes [NAME...]``: one availability line per runtime (an installed
    package's names its origin); exit 3 when a named runtime is unavailable."""
    from ..runtimes import check_names, known_names, registry

    named = [n for item in a.names for n in item.split(",") if n]
    check_names(named)
    entries = registry()
    unavailable = False
    # the built-in engines, their ENGINE:OCI variants, then the installed packages' runtimes
    for name in named or known_names():
        line, ok = _availability_line(name)
        origin = entries[name].origin
        print(line if origin == "built-in" else f"{line} [{origin}]")
        unavailable |= not ok
    return EXIT_UNAVAILABLE if named and unavailable else EXIT_OK


def _availability_line(name: str) -> tuple[str, bool]:
    """One runtime's availability line; an adapter that cannot even load says why."""
    from ..runtimes import get_runtime

    try:
        av = get_runtime(name).availability()
    except Exception as exc:  # a broken adapter (an installed package's) must not end the list
        return f"{name}: unavailable: {type(exc).__name__}: {exc}", False
    return av.line(), av.available


def cmd_facts(a: argparse.Namespace) -> int:
    """``containersec facts``: start the spec on one runtime, print its Facts as JSON, remove
    it; a deployment file's missing image is a SourceError naming the file and line."""
    from ..observe.probe import validate_access
    from ..runtimes import get_runtime

    spec = spec_from_args(a)
    access = tuple(validate_access(k) for k in a.probe_access)
    runtime = get_runtime(a.runtime)
    try:
        c = runtime.start(spec)
    except ImageNotFound as exc:
        if spec.origin is None:
            raise
        raise SourceError(spec.origin.where(), None, "image", str(exc)) from None
    with c:
        print(c.facts(access=access).to_json())
    return EXIT_OK


def cmd_compare(a: argparse.Namespace) -> int:
    """``containersec compare``: observe the spec on every runtime at once and print the
    side-by-side matrix. Exit 0 when a runtime gave Facts (the matrix notes the others), 4 when
    an adapter crashed; when none gave Facts: 2 the image is missing, 4 an error, 3 every
    runtime unavailable."""
    from ..observe.probe import validate_access
    from ..report import report
    from . import runner

    spec = spec_from_args(a)
    access = tuple(validate_access(k) for k in a.probe_access)
    names = [n for item in a.runtime or [] for n in item.split(",") if n]
    kube = spec.origin is not None and spec.origin.kind == "kube"
    observations = runner.observe(spec, runner.select(names or None, kube), access)
    facts = {o.runtime: o.facts for o in observations if o.facts is not None}
    notes = {o.runtime: str(o.error) for o in observations if o.error is not None}
    missing = [o.error for o in observations if isinstance(o.error, ImageNotFound)]
    if missing and not facts:  # bad input, not a finding
        if spec.origin is not None:
            raise SourceError(spec.origin.where(), None, "image", str(missing[0]))
        raise missing[0]
    matrix = report.from_facts(f"{spec.image} side by side", facts, (), notes)
    if a.format == "html":
        text = report.to_html([matrix])
    elif a.format == "md":
        text = report.to_markdown(matrix)
    elif a.format == "json":
        text = report.to_json(matrix)
    else:
        text = report.to_text(matrix)
    if a.output:
        with open(a.output, "w") as fh:
            fh.write(text)
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return _compare_status(observations, bool(facts))


def _compare_status(observations: list[Observation], any_facts: bool) -> int:
    from . import runner

    crashed = runner.crashes(observations)
    for crash in crashed:
        print(crash.trace, end="", file=sys.stderr)
    errors = [o for o in observations if o.error is not None and not o.unavailable]
    for o in errors:
        print(f"containersec compare: error: {o.error}", file=sys.stderr)
    if crashed or (errors and not any_facts):
        return EXIT_ERROR
    if not any_facts:
        print("containersec compare: no runtime is available here", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_OK


def cmd_check(a: argparse.Namespace) -> int:
    """``containersec check`` (imported only when run; ``checkcmd.run`` gives its exit statuses)."""
    from .checkcmd import run

    return run(a)


def cmd_schema(a: argparse.Namespace) -> int:
    """``containersec schema``: print (or write to ``--output``) the JSON Schema of policy files."""
    from ..policy.policy_schema import dumps, policy_schema

    text = dumps(policy_schema())
    if a.output:
        with open(a.output, "w") as fh:
            fh.write(text)
    else:
        print(text, end="")
    return EXIT_OK


def cmd_reap(a: argparse.Namespace) -> int:
    """``containersec reap``: remove what dead sessions left on every available runtime
    (variants share their engine's store), and their probe folders."""
    from ..runtimes import get_runtime, probe_copy, registry

    # a variant shares its engine's store
    for name in [n for n, e in registry().items() if e.kind != "variant"]:
        if _availability_line(name)[1]:
            print(f"{name}: removed {get_runtime(name).reap()} leftover(s) of dead sessions")
    print(f"probe folders: removed {probe_copy.reap()} of dead sessions")
    return EXIT_OK


def add_check_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``check`` subcommand and its options to ``sub`` (here, not in checkcmd:
    building the parser must not import the policy, check and report layers)."""
    c = sub.add_parser("check", help="gate CI on policy files: exit 0 passed, 1 failed, "
                       "2 usage/policy error, 3 nothing judged or (--strict) a runtime "
                       "unavailable, 4 an error stopped a verdict")  # fmt: skip
    c.add_argument("policy", nargs="+")
    c.add_argument("--runtime", action="append",
                   help="override the policy's runtimes (repeat or comma-separate)")  # fmt: skip
    c.add_argument("--format", choices=["text", "junit", "sarif", "json"], default="text")
    c.add_argument("--output", "-o", help="write the report here instead of stdout")
    c.add_argument("--strict", action="store_true", help="an unavailable runtime fails (exit 3)")


def parser() -> argparse.ArgumentParser:
    """The ``containersec`` argument parser, with every subcommand."""
    p = argparse.ArgumentParser(
        prog="containersec",
        description="Observe what container confinement is really in effect.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser(
        "runtimes",
        help="which runtimes work here, and the fix when not (built-in and installed ones)",
    )
    r.add_argument(
        "names", nargs="*", metavar="NAME", help="only these (exit 3 when one is unavailable)"
    )
    f = sub.add_parser("facts", help="start IMAGE, print its observed Facts as JSON, remove it")
    f.add_argument("--runtime", default="docker")
    add_spec_flags(f)
    c = sub.add_parser("compare", help="the side-by-side matrix of one spec across runtimes")
    c.add_argument("--runtime", action="append", help="runtimes (repeat or comma-separate)")
    c.add_argument("--format", choices=["table", "md", "json", "html"], default="table")
    c.add_argument("--output", "-o")
    add_spec_flags(c)
    add_check_parser(sub)
    sub.add_parser("reap", help="remove what killed sessions left behind")
    s = sub.add_parser(
        "schema",
        help="print the JSON Schema of policy files (for editors: the YAML language server)",
    )
    s.add_argument("--output", "-o", help="write it here instead of stdout")
    return p


COMMANDS = {
    "runtimes": cmd_runtimes,
    "facts": cmd_facts,
    "compare": cmd_compare,
    "check": cmd_check,
    "reap": cmd_reap,
    "schema": cmd_schema,
}


def main(argv: Sequence[str] | None = None) -> int:
    """The ``containersec`` entry point: run the subcommand and map errors to exit statuses (2
    bad input, 3 runtime unavailable, 4 any other error: a containersec error, or an unexpected
    exception with its traceback; never 1, the findings status); every container this process
    started is stopped on the way out."""
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except (SpecError, SourceError, UnsupportedSpec, ImageNotFound, UnknownRuntime) as exc:
        print(f"containersec: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeUnavailable as exc:
        print(f"containersec: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ContainerSecError as exc:
        print(f"containersec: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # a bug: shown whole, and not exit 1 (Python's, the findings code)
        traceback.print_exc()
        print(f"containersec: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        from ..runtimes import close_all

        close_all()


if __name__ == "__main__":
    sys.exit(main())
