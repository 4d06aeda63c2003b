"""The benchmark's spawned server: the config it writes and its process-tree stats."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys

import yaml
from twisted.trial import unittest

from headscale_tw.bench import scenarios
from headscale_tw.bench.server import CLK_TCK, SpawnedServer, process_tree, tree_stats
from headscale_tw.config.loader import parse_config


class ConfigWrittenTests(unittest.TestCase):
    """``database`` and ``workers`` change only the config file (nothing is started here)."""

    def written(self, **kw) -> tuple[SpawnedServer, str]:
        server = SpawnedServer(**kw)
        self.addCleanup(server.stop)
        with open(server.config_path) as f:
            return server, f.read()

    def test_sqlite_default(self) -> None:
        """By default: SQLite in the temp dir and no ``workers`` key."""
        server, text = self.written()
        config = parse_config(text)
        self.assertEqual(config.database.type, "sqlite")
        self.assertEqual(config.database.sqlite.path, os.path.join(server.dir, "db.sqlite"))
        self.assertNotIn("workers", yaml.safe_load(text))
        self.assertIsNone(server.pg_name)

    def test_postgres_over_unix_socket(self) -> None:
        """``database="postgres"`` names a throwaway database reached over the socket directory."""
        server, text = self.written(database="postgres", pg_host="/run/pg-socket-dir", pg_user="bench")
        config = parse_config(text)
        self.assertEqual(config.database.type, "postgres")
        self.assertEqual(config.database.postgres.host, "/run/pg-socket-dir")
        self.assertEqual(config.database.postgres.user, "bench")
        self.assertEqual(config.database.postgres.name, server.pg_name)
        self.assertTrue(server.pg_name.startswith("hstw_bench_"))
        self.assertEqual(config.database.postgres.ssl, "disable")

    def test_workers_only_change_the_config(self) -> None:
        """``workers=2`` adds ``workers: 2``; everything else is as with one worker."""
        one = yaml.safe_load(self.written(database="postgres")[1])
        two = yaml.safe_load(self.written(database="postgres", workers=2)[1])
        self.assertEqual(two.pop("workers"), 2)
        for config in (one, two):  # per-server values
            for key in ("server_url", "listen_addr", "metrics_listen_addr", "unix_socket", "noise"):
                config.pop(key)
            config["database"]["postgres"].pop("name")
        self.assertEqual(one, two)

    def test_bad_arguments(self) -> None:
        """An unknown database or a worker count below 1 is refused, naming the value."""
        self.assertRaisesRegex(ValueError, "'mysql'", SpawnedServer, database="mysql")
        self.assertRaisesRegex(ValueError, "0", SpawnedServer, workers=0)


def fake_process(root: str, pid: int, ppid: int, ticks: int, rss_kib: int) -> None:
    """One ``/proc/<pid>`` with the ``stat`` and ``status`` fields the stats read."""
    os.makedirs(os.path.join(root, str(pid)))
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    with open(os.path.join(root, str(pid), "stat"), "w") as f:
        f.write(f"{pid} (py thon) S {ppid} 1 1 0 -1 0 0 0 0 0 {ticks} {ticks} 0 0 20 0 1 0\n")
    with open(os.path.join(root, str(pid), "status"), "w") as f:
        f.write(f"Name:\tpython\nVmHWM:\t{rss_kib * 2} kB\nVmRSS:\t{rss_kib} kB\n")


class TreeStatsTests(unittest.TestCase):
    """``stats()`` sums over the supervisor and its workers, and lists each."""

    def test_fake_proc(self) -> None:
        """Descendants are summed; unrelated processes and non-process entries are not."""
        root = self.mktemp()
        fake_process(root, 10, 1, CLK_TCK, 1024)       # supervisor: 2 s CPU, 1 MiB
        fake_process(root, 11, 10, 2 * CLK_TCK, 2048)  # worker 0
        fake_process(root, 12, 10, 3 * CLK_TCK, 4096)  # worker 1
        fake_process(root, 13, 12, 0, 1024)            # a grandchild
        fake_process(root, 20, 1, 50 * CLK_TCK, 9999)  # someone else
        os.makedirs(os.path.join(root, "self"))
        self.assertEqual(process_tree(10, root), [10, 11, 12, 13])
        stats = tree_stats(10, root)
        self.assertEqual((stats["cpu_s"], stats["rss_mib"], stats["peak_rss_mib"]), (12.0, 8.0, 16.0))
        self.assertEqual(stats["process_count"], 4)
        self.assertEqual([p["pid"] for p in stats["processes"]], [10, 11, 12, 13])
        self.assertEqual(stats["processes"][2]["rss_mib"], 4.0)

    def test_real_children(self) -> None:
        """Against the real /proc: two python children (blocked on stdin) are in this process's tree."""
        children = []
        for _ in range(2):
            child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                     stdin=subprocess.PIPE)
            children.append(child)

        def stop() -> None:
            for child in children:
                child.stdin.close()
                child.wait(30)

        self.addCleanup(stop)
        stats = tree_stats(os.getpid())
        pids = [p["pid"] for p in stats["processes"]]
        self.assertEqual(pids[0], os.getpid())
        for child in children:
            self.assertIn(child.pid, pids)
        self.assertAlmostEqual(stats["rss_mib"], sum(p["rss_mib"] for p in stats["processes"]), delta=0.2)


class WorkersOptionTests(unittest.TestCase):
    """The scenarios CLI's ``--workers`` list."""

    def test_parse(self) -> None:
        """``1,2`` is both counts; zero or words are refused."""
        self.assertEqual(scenarios._workers("1,2"), [1, 2])
        for bad in ("0", "two", ""):
            self.assertRaises(Exception, scenarios._workers, bad)

    def test_workers_need_postgres(self) -> None:
        """More than one worker on SQLite is a usage error (exit 2), before anything runs."""
        with self.assertRaises(SystemExit) as caught, contextlib.redirect_stderr(io.StringIO()) as err:
            scenarios.main(["--workers", "1,2", "--database", "sqlite"])
        self.assertEqual(caught.exception.code, 2)
        self.assertIn("--workers above 1 needs --database postgres", err.getvalue())
