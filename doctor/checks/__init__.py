"""The checks, one module per category; :func:`doctor.registry.all_checks` imports them all."""
