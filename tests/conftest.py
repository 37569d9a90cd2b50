"""tests: fixtures are real parts — databases, Temporal servers, HTTP servers on 127.0.0.1."""

pytest_plugins = [
    "tests.fixtures.db",
    "tests.fixtures.temporal",
    "tests.fixtures.servers",
    "tests.fixtures.processes",
]
