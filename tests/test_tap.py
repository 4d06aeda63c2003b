"""Tests for headscale_tw.tap and the twistd plugin."""

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial import unittest

from headscale_tw import tap
from headscale_tw.service import HeadscaleService


class PluginTests(unittest.TestCase):
    """The twistd plugin is discoverable and points at headscale_tw.tap."""

    def test_discoverable(self):
        """`twistd headscale` finds a service maker named headscale."""
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIn("headscale", makers)
        self.assertEqual(makers["headscale"].module, "headscale_tw.tap")


class OptionsTests(unittest.TestCase):
    """Command-line options of `twistd headscale`."""

    def test_make_service(self):
        """makeService builds a HeadscaleService from the parsed options."""
        options = tap.Options()
        options.parseOptions([])
        svc = tap.makeService(options)
        self.assertIsInstance(svc, HeadscaleService)
