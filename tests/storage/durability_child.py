"""
Child process for tests.storage.test_durability: writes rows until killed.

Usage: ``python durability_child.py '<DatabaseConfig as JSON>' <limit>``.
Opens the database with the real reactor and thread pool, prints ``ready``, then
creates users one transaction at a time and prints each committed user id on its
own line (flushed) only after the commit returned.
"""

import json
import sys

from twisted.internet import task
from twisted.internet.defer import ensureDeferred

from headscale_tw.config.model import DatabaseConfig, PostgresConfig, SqliteConfig
from headscale_tw.storage.database import open_database


async def main(reactor, config, limit):
    db = await open_database(config, reactor)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for i in range(limit):
        user = await db.users.create(f"user{i}")
        sys.stdout.write(f"{user.id}\n")
        sys.stdout.flush()
    await db.close()


if __name__ == "__main__":
    raw = json.loads(sys.argv[1])
    config = DatabaseConfig(
        type=raw["type"], sqlite=SqliteConfig(**raw["sqlite"]), postgres=PostgresConfig(**raw["postgres"])
    )
    task.react(lambda reactor: ensureDeferred(main(reactor, config, int(sys.argv[2]))))
