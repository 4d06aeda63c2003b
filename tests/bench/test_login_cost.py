"""The database work one whole login costs the server (pre-auth key, lite, stream, endpoints)."""

from __future__ import annotations

import collections

from twisted.trial import unittest

from headscale_tw.bench.simnode import SimNode
from headscale_tw.storage.database import DatabasePool, Txn
from tests.bench._server import InProcessServer

HOST = b"127.0.0.1:8080"


class LoginDatabaseWorkTests(unittest.TestCase):
    """A login with a reusable pre-auth key reads and writes the database a fixed, small number of times."""

    def setUp(self):
        self.server = InProcessServer(self)
        self.transactions: collections.Counter = collections.Counter()
        self.statements: list[str] = []
        run_interaction, execute = DatabasePool.run_interaction, Txn.execute

        async def counting_run_interaction(pool, desc, fn, *args):
            self.transactions[desc] += 1
            return await run_interaction(pool, desc, fn, *args)

        def counting_execute(txn, sql, args=()):
            self.statements.append(sql.split()[0])
            return execute(txn, sql, args)

        self.patch(DatabasePool, "run_interaction", counting_run_interaction)
        self.patch(Txn, "execute", counting_execute)

    def login(self, index: int) -> None:
        node = SimNode(index, self.server, HOST, self.server.auth_key, now=self.server.clock.seconds)
        self.server.run(node.up())
        self.server.settle()

    def test_first_login(self):
        """Key lookup, pepper (first use only), node insert with its audit row in the same transaction,
        disco-key and endpoint updates: one statement each."""
        self.login(0)
        self.assertEqual(
            dict(self.transactions),
            {"get_preauthkey_by_prefix": 1, "get_server_state": 1, "create_node": 1, "update_nodes": 2},
        )
        self.assertEqual(sorted(self.statements), ["INSERT", "INSERT", "SELECT", "SELECT", "UPDATE", "UPDATE"])

    def test_later_logins_skip_the_pepper(self):
        """Once read, the pepper is not read again; the key row is read on every login."""
        self.login(0)
        self.transactions.clear()
        self.statements.clear()
        self.login(1)
        self.assertEqual(dict(self.transactions), {"get_preauthkey_by_prefix": 1, "create_node": 1,
                                                   "update_nodes": 2})
        self.assertEqual(len(self.statements), 5)
