"""The shared base of the harness: atomic checksummed storage, the plugin registry, logging and
data locations. It imports no other room of the harness."""
