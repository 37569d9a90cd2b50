"""core.templates: message templates, rendered in a sandbox (`sandbox`) with locale- and
zone-aware filters (`filters`) through one API (`render`)."""
