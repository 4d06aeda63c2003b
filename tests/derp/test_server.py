"""Tests for headscale_tw.derp.server helpers."""

import os
import stat

from nacl.public import PrivateKey
from twisted.internet.task import Clock
from twisted.trial import unittest

from headscale_tw.derp.server import DERPServer, load_or_generate_private_key, node_key_text


class PrivateKeyFileTests(unittest.TestCase):
    """The DERP server key file."""

    def test_generate_then_load(self):
        """A missing file is created with mode 0600 as privkey:<hex> and loads back to the same key."""
        path = os.path.join(self.mktemp(), "derp.key")
        key = load_or_generate_private_key(path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as fp:
            self.assertEqual(fp.read().strip(), "privkey:" + bytes(key).hex())
        self.assertEqual(bytes(load_or_generate_private_key(path)), bytes(key))

    def test_bad_file(self):
        """A file without the privkey: prefix or with the wrong length is refused, naming the file."""
        path = self.mktemp()
        for text in ("nonsense", "privkey:abcd", "privkey:zz" + "0" * 62):
            with open(path, "w") as fp:
                fp.write(text)
            e = self.assertRaises(ValueError, load_or_generate_private_key, path)
            self.assertIn(path, str(e))


class ServerTests(unittest.TestCase):
    """DERPServer construction."""

    def test_node_key_text(self):
        """Raw keys are shown as nodekey:<hex>."""
        self.assertEqual(node_key_text(b"\x01" * 32), "nodekey:" + "01" * 32)

    def test_mesh_key_length(self):
        """A mesh key that is not 32 bytes is refused."""
        self.assertRaises(ValueError, DERPServer, PrivateKey.generate(), Clock(), mesh_key=b"short")

    def test_is_mesh_key(self):
        """Only the exact mesh key in hex is accepted."""
        server = DERPServer(PrivateKey.generate(), Clock(), mesh_key=b"\x02" * 32)
        self.assertTrue(server.is_mesh_key({"meshKey": "02" * 32}))
        self.assertFalse(server.is_mesh_key({"meshKey": "03" * 32}))
        self.assertFalse(server.is_mesh_key({"meshKey": "zz"}))
        self.assertFalse(server.is_mesh_key({}))
