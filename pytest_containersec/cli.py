"""The ``containersec`` command: runtimes, facts, reap (compare and check build on these)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import (
    ContainerSecError,
    ImageNotFound,
    RuntimeUnavailable,
    SpecError,
    UnsupportedSpec,
)
from .spec import DEFAULT_IMAGE, ContainerSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


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
    p.add_argument(
        "--probe-access",
        action="append",
        default=[],
        metavar="PATH:MODE",
        help="also attempt this access (mode r, w or x); repeatable",
    )
    p.add_argument("image", nargs="?", default=DEFAULT_IMAGE)
    p.add_argument("command", nargs=argparse.REMAINDER, help="the main process (default: idle)")


def spec_from_args(a: argparse.Namespace) -> ContainerSpec:
    env = []
    for item in a.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError("env", item, "expected KEY=VALUE")
        env.append((key, value))
    return ContainerSpec(
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
    )


def cmd_runtimes(a: argparse.Namespace) -> int:
    from .runtimes import KNOWN_NAMES, get_runtime

    for name in KNOWN_NAMES:  # the engines, then their ENGINE:OCI runtime variants
        print(get_runtime(name).availability().line())
    return EXIT_OK


def cmd_facts(a: argparse.Namespace) -> int:
    from .probe import validate_access
    from .runtimes import get_runtime

    spec = spec_from_args(a)
    access = tuple(validate_access(k) for k in a.probe_access)
    runtime = get_runtime(a.runtime)
    with runtime.start(spec) as c:
        print(c.facts(access=access).to_json())
    return EXIT_OK


def cmd_compare(a: argparse.Namespace) -> int:
    from . import report, runner
    from .probe import validate_access

    spec = spec_from_args(a)
    access = tuple(validate_access(k) for k in a.probe_access)
    names = [n for item in a.runtime or [] for n in item.split(",") if n]
    observations = runner.observe(spec, runner.select(names or None), access)
    facts = {o.runtime: o.facts for o in observations if o.facts is not None}
    notes = {o.runtime: str(o.error) for o in observations if o.error is not None}
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
    return EXIT_OK if facts else EXIT_FAILED


def cmd_check(a: argparse.Namespace) -> int:
    from .checkcmd import run

    return run(a)


def cmd_reap(a: argparse.Namespace) -> int:
    from .runtimes import RUNTIME_NAMES, get_runtime, probe_copy

    for name in RUNTIME_NAMES:
        rt = get_runtime(name)
        if rt.availability().available:
            print(f"{name}: removed {rt.reap()} leftover(s) of dead sessions")
    print(f"probe folders: removed {probe_copy.reap()} of dead sessions")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="containersec",
        description="Observe what container confinement is really in effect.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("runtimes", help="which runtimes work here, and the fix when not")
    f = sub.add_parser("facts", help="start IMAGE, print its observed Facts as JSON, remove it")
    f.add_argument("--runtime", default="docker")
    add_spec_flags(f)
    c = sub.add_parser("compare", help="the side-by-side matrix of one spec across runtimes")
    c.add_argument("--runtime", action="append", help="runtimes (repeat or comma-separate)")
    c.add_argument("--format", choices=["table", "md", "json", "html"], default="table")
    c.add_argument("--output", "-o")
    add_spec_flags(c)
    from .checkcmd import add_parser as add_check

    add_check(sub)
    sub.add_parser("reap", help="remove what killed sessions left behind")
    return p


COMMANDS = {
    "runtimes": cmd_runtimes,
    "facts": cmd_facts,
    "compare": cmd_compare,
    "check": cmd_check,
    "reap": cmd_reap,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except (SpecError, UnsupportedSpec, ImageNotFound) as exc:
        print(f"containersec: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RuntimeUnavailable as exc:
        print(f"containersec: error: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except ContainerSecError as exc:
        print(f"containersec: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        from .runtimes import close_all

        close_all()


if __name__ == "__main__":
    sys.exit(main())
