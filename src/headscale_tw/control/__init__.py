"""headscale_tw.control."""
