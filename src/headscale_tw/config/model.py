# -*- test-case-name: tests.config -*-
"""
Frozen configuration objects, one per section of Headscale's YAML.

Every field has the embedded default that applies when the key is absent, so
``Config()`` is a complete, runnable configuration (SQLite under ``./var``,
HTTP on 127.0.0.1:8080, metrics on 127.0.0.1:9090). The loader in
:mod:`headscale_tw.config.loader` builds these from a mapping.

Durations are ``float`` seconds; ``0`` means "never"/"disabled" where Headscale
uses ``0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "Config",
    "NoiseConfig",
    "PrefixesConfig",
    "SqliteConfig",
    "PostgresConfig",
    "DatabaseConfig",
    "DerpServerConfig",
    "DerpConfig",
    "NameserversConfig",
    "ExtraRecord",
    "AcmeDNSProviderConfig",
    "DNSConfig",
    "PolicyConfig",
    "TLSConfig",
    "LogConfig",
    "NodeConfig",
    "OIDCConfig",
    "CLIConfig",
    "LogTailConfig",
    "TaildropConfig",
    "AutoUpdateConfig",
    "PreAuthKeysConfig",
]


@dataclass(frozen=True)
class NoiseConfig:
    """``noise.*``: where the server's Noise (machine) private key is kept."""

    private_key_path: str = "./var/noise_private.key"
    #: Oldest client capability version (= Noise protocol version) accepted.
    #: 106 admits tailscale 1.78 (capver 109); Headscale's floor is 113 (1.80).
    min_capability_version: int = 106


@dataclass(frozen=True)
class PrefixesConfig:
    """``prefixes.*``: tailnet address ranges and how addresses are handed out."""

    v4: str | None = "100.64.0.0/10"
    v6: str | None = "fd7a:115c:a1e0::/48"
    allocation: str = "sequential"  # or "random"


@dataclass(frozen=True)
class SqliteConfig:
    """``database.sqlite.*``."""

    path: str = "./var/db.sqlite"
    write_ahead_log: bool = True
    wal_autocheckpoint: int = 1000


@dataclass(frozen=True)
class PostgresConfig:
    """``database.postgres.*`` (``pass`` in YAML is ``password`` here)."""

    host: str = "127.0.0.1"
    port: int = 5432
    name: str = "headscale"
    user: str = "headscale"
    password: str = ""
    max_open_conns: int = 10
    max_idle_conns: int = 10
    conn_max_idle_time_secs: int = 3600
    ssl: str = "disable"


@dataclass(frozen=True)
class DatabaseConfig:
    """``database.*``: ``type`` is ``sqlite`` (alias ``sqlite3``) or ``postgres``."""

    type: str = "sqlite"
    debug: bool = False
    sqlite: SqliteConfig = field(default_factory=SqliteConfig)
    postgres: PostgresConfig = field(default_factory=PostgresConfig)


@dataclass(frozen=True)
class DerpServerConfig:
    """``derp.server.*``: the embedded DERP relay and STUN server."""

    enabled: bool = True
    region_id: int = 999
    region_code: str = "headscale"
    region_name: str = "Headscale Embedded DERP"
    verify_clients: bool = True
    stun_listen_addr: str = "127.0.0.1:3478"
    private_key_path: str = "./var/derp_server_private.key"
    automatically_add_embedded_derp_region: bool = True
    ipv4: str | None = None
    ipv6: str | None = None
    #: File holding the mesh pre-shared key (64 hex digits, derper's ``--mesh-psk-file`` format).
    mesh_key_path: str | None = None
    #: DERP URLs of the other instances to mesh with (``https://host[:port]/derp``).
    mesh_peers: tuple[str, ...] = ()
    #: This instance's own DERP URL, as clients and the other instances reach it
    #: (``https://host[:port]/derp``); ``None``: ``server_url`` + ``/derp``.
    advertise_url: str | None = None


@dataclass(frozen=True)
class DerpConfig:
    """``derp.*``: the DERP map sent to clients."""

    server: DerpServerConfig = field(default_factory=DerpServerConfig)
    urls: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    auto_update_enabled: bool = True
    update_frequency: float = 24 * 3600.0


@dataclass(frozen=True)
class NameserversConfig:
    """``dns.nameservers.*``: global resolvers and split DNS routes."""

    global_: tuple[str, ...] = ()
    split: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class ExtraRecord:
    """One ``dns.extra_records`` entry."""

    name: str
    type: str
    value: str


@dataclass(frozen=True)
class AcmeDNSProviderConfig:
    """``dns.acme_provider.*`` (ours, not Headscale's): where ``tailscale cert`` challenge records go.

    ``type`` empty means no provider: nodes are not offered HTTPS certificates.
    ``rfc2136`` sends TSIG-signed dynamic updates to ``server`` (``host:port``)
    for ``zone`` (default: ``dns.base_domain``).
    """

    type: str = ""
    server: str = ""
    zone: str = ""
    tsig_key_name: str = ""
    tsig_algorithm: str = "hmac-sha256"
    tsig_secret_path: str = ""
    timeout: float = 10.0
    ttl: int = 60

    @property
    def enabled(self) -> bool:
        """Whether a provider is configured."""
        return bool(self.type)


@dataclass(frozen=True)
class DNSConfig:
    """``dns.*``: MagicDNS and resolver settings pushed to clients."""

    magic_dns: bool = True
    base_domain: str = "headscale.internal"
    override_local_dns: bool = True
    nameservers: NameserversConfig = field(default_factory=NameserversConfig)
    search_domains: tuple[str, ...] = ()
    extra_records: tuple[ExtraRecord, ...] = ()
    extra_records_path: str | None = None
    acme_provider: AcmeDNSProviderConfig = field(default_factory=AcmeDNSProviderConfig)


@dataclass(frozen=True)
class PolicyConfig:
    """``policy.*``: ``mode`` is ``file`` or ``database``; empty path = allow all."""

    mode: str = "file"
    path: str = ""


@dataclass(frozen=True)
class TLSConfig:
    """``tls_*`` and ``acme_*``: serve HTTPS when a certificate and key are given."""

    cert_path: str = ""
    key_path: str = ""
    letsencrypt_hostname: str = ""
    letsencrypt_cache_dir: str = "./var/cache"
    letsencrypt_challenge_type: str = "HTTP-01"
    letsencrypt_listen: str = ":http"
    acme_url: str = "https://acme-v02.api.letsencrypt.org/directory"
    acme_email: str = ""

    @property
    def enabled(self) -> bool:
        """True when the server terminates TLS itself."""
        return bool(self.cert_path and self.key_path) or bool(self.letsencrypt_hostname)


@dataclass(frozen=True)
class LogConfig:
    """``log.*``."""

    level: str = "info"
    format: str = "text"


@dataclass(frozen=True)
class NodeConfig:
    """``node.*``: key expiry and ephemeral-node garbage collection."""

    expiry: float = 0.0  # seconds; 0 = node keys never expire
    ephemeral_inactivity_timeout: float = 30 * 60.0
    # node.routes.ha.*: HA subnet-router health probing (0 interval = disabled).
    routes_ha_probe_interval: float = 10.0
    routes_ha_probe_timeout: float = 5.0


@dataclass(frozen=True)
class TuningConfig:
    """``tuning.*``: only ``batch_change_delay`` applies to headscale-tw.

    Deltas for one map stream that arrive within ``batch_change_delay`` seconds
    are merged into one message (0 disables batching). Headscale's default is
    800 ms; ours is 5 ms, enough to coalesce a burst of joins while keeping a
    single change's latency negligible.
    """

    batch_change_delay: float = 0.005


@dataclass(frozen=True)
class OIDCConfig:
    """``oidc.*``: sign-in through an OpenID provider (docs/oidc.md)."""

    issuer: str = ""
    client_id: str = ""
    client_secret: str = ""
    client_secret_path: str = ""
    scope: tuple[str, ...] = ("openid", "profile", "email")
    extra_params: tuple[tuple[str, str], ...] = ()
    allowed_domains: tuple[str, ...] = ()
    allowed_users: tuple[str, ...] = ()
    allowed_groups: tuple[str, ...] = ()
    email_verified_required: bool = True
    only_start_if_oidc_is_available: bool = True
    pkce_enabled: bool = False
    pkce_method: str = "S256"
    use_expiry_from_token: bool = False

    @property
    def enabled(self) -> bool:
        """True when an issuer is configured."""
        return bool(self.issuer)


@dataclass(frozen=True)
class CLIConfig:
    """``cli.*``: how the ``headscale`` command reaches a remote server.

    Empty ``address`` means "use the local ``unix_socket``". The usual way to
    set these is the environment (``HEADSCALE_CLI_ADDRESS``, ``HEADSCALE_CLI_API_KEY``).
    """

    address: str = ""
    api_key: str = ""
    timeout: float = 5.0
    insecure: bool = False


@dataclass(frozen=True)
class LogTailConfig:
    """``logtail.*``: whether clients are told to upload logs to Tailscale Inc."""

    enabled: bool = False


@dataclass(frozen=True)
class TaildropConfig:
    """``taildrop.*``: tailnet-wide file sharing capability."""

    enabled: bool = True


@dataclass(frozen=True)
class AutoUpdateConfig:
    """``auto_update.*``: the default of the clients' auto-update setting."""

    enabled: bool = False


@dataclass(frozen=True)
class PreAuthKeysConfig:
    """``preauth_keys.*``."""

    revoked_retention: float = 168 * 3600.0


@dataclass(frozen=True)
class AuditConfig:
    """``audit.*``: the audit log (docs/audit.md)."""

    #: Seconds an audit event is kept; 0 keeps events forever.
    retention: float = 90 * 86400.0


@dataclass(frozen=True)
class Config:
    """The whole server configuration; ``Config()`` is the embedded default."""

    server_url: str = "http://127.0.0.1:8080"
    listen_addr: str = "127.0.0.1:8080"
    metrics_listen_addr: str = "127.0.0.1:9090"
    grpc_listen_addr: str = ""
    grpc_allow_insecure: bool = False
    unix_socket: str = "./var/headscale.sock"
    unix_socket_permission: int = 0o770
    disable_check_updates: bool = True
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    prefixes: PrefixesConfig = field(default_factory=PrefixesConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    derp: DerpConfig = field(default_factory=DerpConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    log: LogConfig = field(default_factory=LogConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    oidc: OIDCConfig = field(default_factory=OIDCConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    trusted_proxies: tuple[str, ...] = ()
    cli: CLIConfig = field(default_factory=CLIConfig)
    logtail: LogTailConfig = field(default_factory=LogTailConfig)
    taildrop: TaildropConfig = field(default_factory=TaildropConfig)
    auto_update: AutoUpdateConfig = field(default_factory=AutoUpdateConfig)
    preauth_keys: PreAuthKeysConfig = field(default_factory=PreAuthKeysConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    #: Server processes on this host (one per core); above 1 needs PostgreSQL. See docs/workers.md.
    workers: int = 1
    #: Set by the supervisor, not the file: which worker this process is (``None``: not a worker).
    worker_index: int | None = None
    # Where the file came from (None = embedded defaults); relative paths in the
    # config are resolved against the process working directory, as Headscale does.
    source_path: str | None = None
