"""A testinfra backend over ``Container.exec``: testinfra's modules on every runtime.

testinfra hands its backends command *strings* (``stat -c %a /etc/passwd``). They run as
``argv = [PROBE_BUSYBOX, "sh", "-c", command]``: the static busybox the runtimes bind-mount
read-only into every container, whose ``sh`` finds its own applets (stat, id, ps, ...)
without a PATH. So ``host.file``, ``host.user``, ``host.group``, ``host.process`` work
on images without a shell or coreutils (distroless, scratch) too, as the container's user
and with its confinement (namespaces, capabilities, seccomp). The command string never
reaches a host shell.

Because ``sh`` prefers its own applets, ``ps`` is always the probe's busybox ``ps``, whose
``-o`` lacks ``time``: ``host.process`` is bound to :class:`ProbeProcess`, which asks for
the columns it has (``pid``, ``ppid``, ``comm``, ``user``, ``args``, ``stat``, ``rss``,
...; ``lstart`` is empty).

Limits: output is text (decoded by the adapter; binary content is not byte-exact), and
``host.sudo()`` is not supported (there is no sudo in the probe).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import testinfra.host
from testinfra.backend import base
from testinfra.modules.process import BusyboxProcess

from .target import DEFAULT_EXEC_TIMEOUT, PROBE_BUSYBOX

if TYPE_CHECKING:
    from .target import Target

_hosts: weakref.WeakKeyDictionary[Target, Any] = weakref.WeakKeyDictionary()


class ContainersecBackend(base.BaseBackend):  # type: ignore[misc]
    """testinfra backend bound to one live container."""

    NAME = "containersec"

    def __init__(self, container: Target, timeout: float = DEFAULT_EXEC_TIMEOUT) -> None:
        self.container = container
        self.timeout = timeout
        super().__init__(f"{container.runtime}/{container.name}")

    def get_pytest_id(self) -> str:
        """``containersec://RUNTIME/NAME``, the id testinfra shows for this host."""
        return f"containersec://{self.container.runtime}/{self.container.name}"

    def get_encoding(self) -> str:
        """Always UTF-8, instead of testinfra's default that runs a Python in the container to
        ask for its locale."""
        return "utf-8"

    def argv(self, command: str, *args: str) -> list[str]:
        """The argv that runs testinfra's command string in the container."""
        return [PROBE_BUSYBOX, "sh", "-c", self.get_command(command, *args)]

    def run(self, command: str, *args: str, **kwargs: Any) -> Any:
        """Run testinfra's command in the container as the container's user, through the probe
        busybox's ``sh``; keyword arguments are ignored."""
        argv = self.argv(command, *args)
        res = self.container.exec(argv, timeout=self.timeout)
        return self.result(res.rc, self.encode(argv[-1]), res.stdout, res.stderr)


class ProbeProcess(BusyboxProcess):  # type: ignore[misc]
    """``host.process`` over the probe busybox's ``ps`` (no ``time``/``lstart`` column)."""

    @classmethod
    def get_module_class(cls, host: Any) -> type[ProbeProcess]:
        """Always this class, instead of testinfra's choice by the image's /bin/ps: commands run
        under the probe's ``sh``, whose ``ps`` is busybox's."""
        return cls

    def _get_processes(self, **filters: Any) -> list[dict[str, Any]]:
        base = {"pid", "ppid", "comm", "user"}
        attributes = [*sorted((base | set(filters)) - {"args", "lstart"}), "args"]
        procs = []
        for line in self.check_output("ps -A -o %s", ",".join(attributes)).splitlines()[1:]:
            parts = line.split()
            attrs: dict[str, Any] = {}
            for i, key in enumerate(attributes[:-1]):
                attrs[key] = _number(parts[i]) if i < len(parts) else ""
            attrs["args"] = " ".join(parts[len(attributes) - 1 :])
            attrs["lstart"] = ""  # unknown to busybox ps: pid reuse is not detected
            procs.append(attrs)
        return procs

    def _get_process_attribute_by_pid(self, pid: int, name: str) -> dict[str, Any]:
        for attrs in self._get_processes(**{name: None}):
            if attrs["pid"] == pid:
                return {"lstart": "", name: attrs[name]}
        raise RuntimeError(f"no process {pid}")


def _number(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def host_for(container: Target) -> Any:
    """The testinfra ``Host`` of ``container`` (one per container, cached)."""
    host = _hosts.get(container)
    if host is None:
        host = testinfra.host.Host(ContainersecBackend(container))
        host.process = ProbeProcess.get_module(host)
        _hosts[container] = host
    return host
