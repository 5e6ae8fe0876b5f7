"""What Docker and Podman share: the OCI engine container, the spec's OCI fields,
the ENGINE:OCI variant names."""
