"""headscale_tw.testing."""
