"""Built-in attribution-quality metrics, plugins of the framework (entry-point group ``tdabench.metrics``)."""
