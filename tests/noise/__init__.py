"""Tests for headscale_tw.noise, keys and /key."""
