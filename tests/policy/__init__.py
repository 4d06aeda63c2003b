"""Tests for headscale_tw.policy."""
