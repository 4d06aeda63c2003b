"""Tests for headscale-tw (run with trial)."""
