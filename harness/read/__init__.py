"""The read side: the typed run record, reading and writing results, the LDS and its statistics,
leaderboards, the frontier, reports and tracking. It imports only the core and itself, never the
run path (harness.engine) or the views."""
