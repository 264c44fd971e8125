"""Backup, verification and restore of a HiveMind cluster (and, later, recovery playbooks)."""
