"""containerd directly, through ``ctr`` (containerd.py, containerd_spec.py)."""
