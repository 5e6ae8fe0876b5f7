"""Podman: the adapter (podman.py), its spec mapping, the API service it starts, and
podman-kube (``podman kube play``)."""
