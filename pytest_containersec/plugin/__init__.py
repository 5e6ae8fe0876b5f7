"""The pytest plugin: hooks (hooks.py, registered by the entry point plugin.py), fixtures,
options, policy-file items and the session's reports."""
