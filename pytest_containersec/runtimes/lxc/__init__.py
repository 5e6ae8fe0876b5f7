"""LXC: unprivileged containers with an idmap (lxc.py, lxc_spec.py)."""
