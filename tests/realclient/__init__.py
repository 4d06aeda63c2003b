"""Tests for the real-client harness (headscale_tw.testing.realclient)."""
