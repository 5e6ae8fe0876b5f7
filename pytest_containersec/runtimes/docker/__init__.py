"""Docker: the adapter (docker.py) and the extra daemons it starts (docker_daemons.py:
userns-remap and rootless)."""
