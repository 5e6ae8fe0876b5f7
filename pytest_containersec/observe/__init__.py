"""How a running container is observed: the probe inside, the host's /proc, one Facts.

Needs only what :class:`~pytest_containersec.observe.target.Target` describes of a container,
so it sits below the runtimes, which build on it."""
