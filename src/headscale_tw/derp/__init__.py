"""headscale_tw.derp."""
