"""The built-in tasks (data + model + training recipe + observable). They are plugins of the
framework: each is registered by an entry point in the group ``tdabench.tasks`` (pyproject.toml)."""
