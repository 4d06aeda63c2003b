# -*- test-case-name: tests.cli.test_output -*-
"""Tests for headscale_tw.timestamps, headscale_tw.cli._messages and headscale_tw.cli._output."""

import io
import json
from datetime import datetime, timezone

import yaml
from twisted.trial import unittest

from headscale_tw.cli._messages import PREAUTHKEY, USER, to_go_json, to_go_yaml
from headscale_tw.cli._output import Output, render_table, table_time
from headscale_tw.timestamps import format_timestamp, parse_timestamp

__all__ = ["TimestampTests", "GoShapeTests", "OutputTests", "TableTests"]

REST_USER = {"id": "3", "name": "alice", "createdAt": "2023-11-14T22:13:20.5Z", "displayName": "",
             "email": "a@example.com", "providerId": "", "provider": "", "profilePicUrl": ""}


class TimestampTests(unittest.TestCase):
    """RFC 3339 text is parsed and produced like protobuf's JSON."""

    def test_parse(self):
        """Fractions up to nanoseconds and offsets are understood."""
        dt, nanos = parse_timestamp("2023-11-14T22:13:20.123456789Z")
        self.assertEqual((dt, nanos), (datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=timezone.utc), 123456789))
        dt, _ = parse_timestamp("2023-11-15T00:13:20+02:00")
        self.assertEqual(dt, datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc))
        self.assertRaises(ValueError, parse_timestamp, "yesterday")

    def test_format(self):
        """Whole seconds have no fraction; milliseconds get three digits."""
        self.assertEqual(format_timestamp(datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)), "2024-01-02T03:04:05Z")
        self.assertEqual(format_timestamp(datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=timezone.utc)),
                         "2024-01-02T03:04:05.500Z")
        self.assertEqual(format_timestamp(datetime(2024, 1, 2, 3, 4, 5, 7, tzinfo=timezone.utc)),
                         "2024-01-02T03:04:05.000007Z")


class GoShapeTests(unittest.TestCase):
    """REST JSON converts to the shapes Headscale's CLI prints."""

    def test_json_user(self):
        """snake_case, numeric id, {seconds, nanos}, empty fields omitted."""
        self.assertEqual(to_go_json(USER, REST_USER), {
            "id": 3, "name": "alice", "created_at": {"seconds": 1700000000, "nanos": 500000000},
            "email": "a@example.com"})

    def test_json_preauthkey(self):
        """A nested user is converted and false booleans are omitted."""
        key = {"user": REST_USER, "id": "1", "key": "hskey-auth-x", "reusable": True, "ephemeral": False,
               "used": False, "expiration": None, "createdAt": "2023-11-14T22:13:20Z", "aclTags": []}
        out = to_go_json(PREAUTHKEY, key)
        self.assertEqual(list(out), ["user", "id", "key", "reusable", "created_at"])
        self.assertEqual(out["user"]["id"], 3)
        self.assertEqual(out["created_at"], {"seconds": 1700000000})

    def test_yaml_user(self):
        """YAML keys are lower-cased field names and every field is present."""
        out = to_go_yaml(USER, REST_USER)
        self.assertEqual(list(out), ["id", "name", "createdat", "displayname", "email", "providerid", "provider",
                                     "profilepicurl"])
        self.assertEqual(out["createdat"], {"seconds": 1700000000, "nanos": 500000000})

    def test_idp_groups_only_when_present(self):
        """The IdP groups (not a Headscale field) are printed in JSON and YAML only when the user has some."""
        self.assertNotIn("idp_groups", to_go_json(USER, dict(REST_USER, idpGroups=[])))
        grouped = dict(REST_USER, idpGroups=["eng", "/ops"])
        self.assertEqual(to_go_json(USER, grouped)["idp_groups"], ["eng", "/ops"])
        self.assertEqual(to_go_yaml(USER, grouped)["idpgroups"], ["eng", "/ops"])


class OutputTests(unittest.TestCase):
    """Output writes each format and errors in the same format."""

    def make(self, fmt):
        """An Output over string buffers."""
        self.stdout, self.stderr = io.StringIO(), io.StringIO()
        return Output(fmt, self.stdout, self.stderr)

    def test_formats(self):
        """json is tab-indented, json-line compact, yaml block style, default human text."""
        self.make("json").result({"a": 1}, {"a": 1}, "human")
        self.assertEqual(self.stdout.getvalue(), '{\n\t"a": 1\n}\n')
        self.make("json-line").result({"a": [1]}, None, "human")
        self.assertEqual(self.stdout.getvalue(), '{"a":[1]}\n')
        self.make("yaml").result(None, {"b": {"c": 1}}, "human")
        self.assertEqual(yaml.safe_load(self.stdout.getvalue()), {"b": {"c": 1}})
        self.make("").result({"a": 1}, None, "human")
        self.assertEqual(self.stdout.getvalue(), "human\n")

    def test_errors(self):
        """Errors are one line on stderr, or {"error": ...} in machine formats."""
        self.make("").error('user "bob" not found')
        self.assertEqual(self.stderr.getvalue(), 'Error: user "bob" not found\n')
        self.make("json").error("x")
        self.assertEqual(json.loads(self.stderr.getvalue()), {"error": "x"})
        self.assertEqual(self.stdout.getvalue(), "")

    def test_unknown_format(self):
        """An unknown format is refused."""
        self.assertRaises(ValueError, Output, "xml", io.StringIO(), io.StringIO())


class TableTests(unittest.TestCase):
    """Human tables line up."""

    def test_columns(self):
        """Cells are padded to the widest entry and multi-line cells spread down."""
        text = render_table(["ID", "Name"], [["1", "alice"], ["22", "b\nc"]])
        self.assertEqual(text.splitlines(), ["ID | Name", "1  | alice", "22 | b", "   | c"])

    def test_time(self):
        """Timestamps show as Headscale's date-time; missing ones as '-'."""
        self.assertEqual(table_time("2023-11-14T22:13:20Z"), "2023-11-14 22:13:20")
        self.assertEqual(table_time(None), "-")
