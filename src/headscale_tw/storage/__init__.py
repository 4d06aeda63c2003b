"""headscale_tw.storage."""
