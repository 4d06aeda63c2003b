"""Tests for headscale_tw.storage and headscale_tw.secrets."""
