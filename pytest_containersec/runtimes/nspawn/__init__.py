"""systemd-nspawn: the adapter, its spec mapping, and what other runtimes reuse: the
agent inside (nspawn_agent), cgroups made by hand (nspawn_cgroup), rootfs copies
(nspawn_image)."""
