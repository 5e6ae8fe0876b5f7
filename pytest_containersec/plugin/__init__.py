"""The pytest plugin: hooks (plugin.py), fixtures, options, policy-file items and the
session's reports."""
