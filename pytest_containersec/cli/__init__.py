"""The ``containersec`` command: facts, compare, check, runtimes, schema."""
