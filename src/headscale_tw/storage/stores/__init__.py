"""headscale_tw.storage.stores."""
