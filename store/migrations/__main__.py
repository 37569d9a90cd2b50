"""store: Alembic's command line without an alembic.ini — `python -m store.migrations --help`.

Writing a revision after changing store/models.py (autogenerate compares the models with
a database at head; NUDGE_DATABASE_URL, the dev SQLite file by default):
    python -m store.migrations upgrade head
    python -m store.migrations revision --autogenerate -m "add deliveries.channel_ref"
Then read the file it wrote and name it after what it does. `check` says whether the
models and the migrations agree.
"""

from __future__ import annotations

import sys

from alembic.config import CommandLine

from core.config import Settings
from store.db import alembic_config


def main(argv: list[str] | None = None) -> None:
    cli = CommandLine(prog="python -m store.migrations")
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.error("name a command, e.g. upgrade head, current, revision --autogenerate")
    cli.run_cmd(alembic_config(Settings().database_url), options)


if __name__ == "__main__":
    main(sys.argv[1:])
