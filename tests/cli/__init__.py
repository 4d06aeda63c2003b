"""Tests for headscale_tw.cli."""
