"""Research views over results (insight, ground-truth adequacy). They may use every other room,
and reach methods and tasks only through the registry and the public interfaces."""
