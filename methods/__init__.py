"""The built-in attribution methods, one module per method family, plus adapters to reference
implementations in ``tdabench.methods.reference``. They are plugins of the framework: each is
registered by an entry point in the group ``tdabench.methods`` (pyproject.toml)."""
