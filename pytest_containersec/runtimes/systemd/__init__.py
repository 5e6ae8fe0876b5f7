"""systemd units: transient (systemd_run) and portable services (portable), on the
host's systemd or one booted in nspawn (systemd_run_host)."""
