"""Tests for headscale_tw.derp."""
