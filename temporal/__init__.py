"""temporal: what faces Temporal from outside a workflow — the client and its converter, the
search attributes, and the servers Nudge starts itself."""
