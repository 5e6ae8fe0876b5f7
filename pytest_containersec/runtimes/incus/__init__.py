"""The incus runtime (Incus: system containers on liblxc, through its daemon)."""
