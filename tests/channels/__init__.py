"""tests.channels: each provider client against a real server on 127.0.0.1."""
