"""headscale_tw.oidc: signing people in through an OpenID Connect provider (the relying party)."""
