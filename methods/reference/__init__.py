"""Adapters to reference implementations written by others (extra ``reference``): kronfluence,
traker, devinterp. Each converts its library's scores to the harness sign convention and imports
its library only when run, so the adapters are listed even where the extra is missing."""
