"""Tests for headscale_tw.web."""
