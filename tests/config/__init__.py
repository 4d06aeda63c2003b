"""Tests for headscale_tw.config."""
