"""Tests for :mod:`headscale_tw.certs`."""
