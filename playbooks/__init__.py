"""The playbooks shipped with HiveMind (YAML package data; see `hivemind playbook list`)."""
