"""Pure readers of the Linux kernel's view: /proc, cgroups, capabilities, masking, identities.

Nothing here knows a container engine; the observers and the runtimes build on it."""
