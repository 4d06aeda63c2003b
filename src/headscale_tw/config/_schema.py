# -*- test-case-name: tests.config.test_loader -*-
"""
The table of every YAML key the loader knows: its value kind, where it lands on
:class:`~headscale_tw.config.model.Config`, plus deprecated aliases and removed
keys.

Keeping the keys in one flat table gives the loader three things for free:
unknown-key warnings, ``HEADSCALE_*`` environment lookups (each key's dots
become underscores; :data:`ENV_NAMES` maps the joined name back to the key,
which is unambiguous because the table is checked for collisions) and the
documentation of defaults.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Key", "KEYS", "BY_NAME", "SECTIONS", "ALIASES", "REMOVED", "IGNORED", "ENV_NAMES"]


@dataclass(frozen=True)
class Key:
    """One leaf of the YAML tree.

    ``kind`` is one of ``str``, ``opt_str`` (empty = ``None``), ``bool``,
    ``int``, ``duration``, ``list``, ``split`` (domain → resolvers),
    ``map`` (str → str), ``records`` (DNS extra records), ``mode`` (octal
    file mode), ``prefix``, ``pg_ssl``. ``attr`` is the dotted attribute path
    on ``Config``.
    """

    name: str
    kind: str
    attr: str


def _k(name: str, kind: str, attr: str | None = None) -> Key:
    return Key(name, kind, attr if attr is not None else name)


KEYS: tuple[Key, ...] = (
    _k("server_url", "str"),
    _k("listen_addr", "str"),
    _k("metrics_listen_addr", "str"),
    _k("grpc_listen_addr", "str"),
    _k("grpc_allow_insecure", "bool"),
    _k("trusted_proxies", "list"),
    _k("disable_check_updates", "bool"),
    _k("unix_socket", "str"),
    _k("unix_socket_permission", "mode"),
    _k("workers", "int"),
    _k("noise.private_key_path", "str"),
    _k("noise.min_capability_version", "int"),
    _k("prefixes.v4", "prefix"),
    _k("prefixes.v6", "prefix"),
    _k("prefixes.allocation", "str"),
    _k("database.type", "str"),
    _k("database.debug", "bool"),
    _k("database.sqlite.path", "str"),
    _k("database.sqlite.write_ahead_log", "bool"),
    _k("database.sqlite.wal_autocheckpoint", "int"),
    _k("database.postgres.host", "str"),
    _k("database.postgres.port", "int"),
    _k("database.postgres.name", "str"),
    _k("database.postgres.user", "str"),
    _k("database.postgres.pass", "str", "database.postgres.password"),
    _k("database.postgres.max_open_conns", "int"),
    _k("database.postgres.max_idle_conns", "int"),
    _k("database.postgres.conn_max_idle_time_secs", "int"),
    _k("database.postgres.ssl", "pg_ssl"),
    _k("derp.server.enabled", "bool"),
    _k("derp.server.region_id", "int"),
    _k("derp.server.region_code", "str"),
    _k("derp.server.region_name", "str"),
    _k("derp.server.verify_clients", "bool"),
    _k("derp.server.stun_listen_addr", "str"),
    _k("derp.server.private_key_path", "str"),
    _k("derp.server.automatically_add_embedded_derp_region", "bool"),
    _k("derp.server.ipv4", "opt_str"),
    _k("derp.server.ipv6", "opt_str"),
    _k("derp.server.mesh_key_path", "opt_str"),
    _k("derp.server.mesh_peers", "list"),
    _k("derp.server.advertise_url", "opt_str"),
    _k("derp.urls", "list"),
    _k("derp.paths", "list"),
    _k("derp.auto_update_enabled", "bool"),
    _k("derp.update_frequency", "duration"),
    _k("node.expiry", "duration"),
    _k("tuning.batch_change_delay", "duration"),
    _k("node.ephemeral.inactivity_timeout", "duration", "node.ephemeral_inactivity_timeout"),
    _k("node.routes.ha.probe_interval", "duration", "node.routes_ha_probe_interval"),
    _k("node.routes.ha.probe_timeout", "duration", "node.routes_ha_probe_timeout"),
    _k("preauth_keys.revoked_retention", "duration"),
    _k("audit.retention", "duration"),
    _k("dns.magic_dns", "bool"),
    _k("dns.base_domain", "str"),
    _k("dns.override_local_dns", "bool"),
    _k("dns.nameservers.global", "list", "dns.nameservers.global_"),
    _k("dns.nameservers.split", "split"),
    _k("dns.search_domains", "list"),
    _k("dns.extra_records", "records"),
    _k("dns.extra_records_path", "opt_str"),
    _k("dns.acme_provider.type", "str"),
    _k("dns.acme_provider.server", "str"),
    _k("dns.acme_provider.zone", "str"),
    _k("dns.acme_provider.tsig_key_name", "str"),
    _k("dns.acme_provider.tsig_algorithm", "str"),
    _k("dns.acme_provider.tsig_secret_path", "str"),
    _k("dns.acme_provider.timeout", "duration"),
    _k("dns.acme_provider.ttl", "int"),
    _k("policy.mode", "str"),
    _k("policy.path", "str"),
    _k("tls_cert_path", "str", "tls.cert_path"),
    _k("tls_key_path", "str", "tls.key_path"),
    _k("tls_letsencrypt_hostname", "str", "tls.letsencrypt_hostname"),
    _k("tls_letsencrypt_cache_dir", "str", "tls.letsencrypt_cache_dir"),
    _k("tls_letsencrypt_challenge_type", "str", "tls.letsencrypt_challenge_type"),
    _k("tls_letsencrypt_listen", "str", "tls.letsencrypt_listen"),
    _k("acme_url", "str", "tls.acme_url"),
    _k("acme_email", "str", "tls.acme_email"),
    _k("log.level", "str"),
    _k("log.format", "str"),
    _k("oidc.only_start_if_oidc_is_available", "bool"),
    _k("oidc.issuer", "str"),
    _k("oidc.client_id", "str"),
    _k("oidc.client_secret", "str"),
    _k("oidc.client_secret_path", "str"),
    _k("oidc.use_expiry_from_token", "bool"),
    _k("oidc.scope", "list"),
    _k("oidc.email_verified_required", "bool"),
    _k("oidc.extra_params", "map"),
    _k("oidc.allowed_domains", "list"),
    _k("oidc.allowed_users", "list"),
    _k("oidc.allowed_groups", "list"),
    _k("oidc.pkce.enabled", "bool", "oidc.pkce_enabled"),
    _k("oidc.pkce.method", "str", "oidc.pkce_method"),
    _k("cli.address", "str"),
    _k("cli.api_key", "str"),
    _k("cli.timeout", "duration"),
    _k("cli.insecure", "bool"),
    _k("logtail.enabled", "bool"),
    _k("taildrop.enabled", "bool"),
    _k("auto_update.enabled", "bool"),
)

BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}

# Old key → current key. The old key is read (with a warning) unless the
# current key is also set, in which case the old one is ignored (with a warning).
ALIASES: dict[str, str] = {
    "ephemeral_node_inactivity_timeout": "node.ephemeral.inactivity_timeout",
    "acl_policy_path": "policy.path",
    "dns_config.magic_dns": "dns.magic_dns",
    "dns_config.base_domain": "dns.base_domain",
    "dns_config.override_local_dns": "dns.override_local_dns",
    "dns_config.nameservers": "dns.nameservers.global",
    "dns_config.restricted_nameservers": "dns.nameservers.split",
    "dns_config.domains": "dns.search_domains",
    "dns_config.extra_records": "dns.extra_records",
    "db_type": "database.type",
    "db_path": "database.sqlite.path",
    "db_host": "database.postgres.host",
    "db_port": "database.postgres.port",
    "db_name": "database.postgres.name",
    "db_user": "database.postgres.user",
    "db_pass": "database.postgres.pass",
    "db_ssl": "database.postgres.ssl",
    "log_level": "log.level",
    "log_format": "log.format",
}

# Keys Headscale removed outright: setting one is an error with this advice.
REMOVED: dict[str, str] = {
    "dns.use_username_in_magic_dns": "was removed from Headscale; MagicDNS names no longer contain the user name",
    "dns_config.use_username_in_magic_dns": "was removed from Headscale; MagicDNS names no longer contain the user name",
    "oidc.strip_email_domain": "was removed in Headscale 0.26; see its changelog",
    "oidc.map_legacy_users": "was removed in Headscale 0.26; see its changelog",
    "oidc.expiry": "was removed; use node.expiry instead",
    "randomize_client_port": (
        'was removed in Headscale 0.29; set "randomizeClientPort": true at the top '
        "level of the policy file instead"
    ),
}

# Accepted for compatibility, with no effect here (a notice is logged when set).
IGNORED: dict[str, str] = {
    "database.gorm": "GORM settings do not apply to headscale-tw",
    "derp.server.stun": "the embedded STUN server follows derp.server.enabled",
    "node_update_check_interval": "was removed from Headscale and has no effect",
    "private_key_path": "was only used by pre-Noise clients, which are not supported",
}

# Every dotted prefix that is a mapping in the YAML tree.
SECTIONS: frozenset[str] = frozenset(
    ".".join(name.split(".")[:i])
    for name in (*BY_NAME, *ALIASES, *REMOVED)
    for i in range(1, name.count(".") + 1)
)


def _env_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for name in BY_NAME:
        joined = name.replace(".", "_").upper()
        if joined in names:  # pragma: no cover - guarded by a test
            raise AssertionError(f"{name} and {names[joined]} share the variable {joined}")
        names[joined] = name
    for old, new in ALIASES.items():
        # "log_level" and "log.level" both spell LOG_LEVEL: the current key wins.
        names.setdefault(old.replace(".", "_").upper(), old)
    return names


# "DATABASE_SQLITE_PATH" → "database.sqlite.path" (without the HEADSCALE_ prefix).
ENV_NAMES: dict[str, str] = _env_names()
