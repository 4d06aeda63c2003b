"""
The seams between layers, as zope interfaces.

Every implementation (and every fake in :mod:`headscale_tw.testing`) is checked
with ``verifyObject`` in the tests. Store methods are coroutines (``async def``);
they raise the errors from :mod:`headscale_tw.errors`, never database exceptions.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = [
    "IUserStore",
    "INodeStore",
    "IPreAuthKeyStore",
    "IApiKeyStore",
    "IPolicyStore",
    "IServerStateStore",
    "IAuthRequestStore",
    "IAuditEventStore",
    "IDatabase",
    "IOIDCLoginStore",
    "INodeNotifier",
    "IPollService",
    "ITailnetPolicy",
]


class IUserStore(Interface):
    """Users. Names are unique."""

    async def create(name, display_name="", email="", provider="", provider_identifier="", now=None):
        """Insert a user and return its ``User``; ``AlreadyExists`` if the name is taken."""

    async def sign_in(provider_identifier, name, email="", display_name="", profile_pic_url="", idp_groups=None,
                      now=None):
        """Return the user an OpenID provider identifies as ``provider_identifier``: created
        (named ``name``, suffixed when taken) or with email, display name and picture updated, and
        its IdP groups replaced by ``idp_groups`` (a sequence of strings) unless that is ``None``."""

    async def get(user_id):
        """Return the ``User`` with this id, or raise ``NotFound``."""

    async def get_by_name(name):
        """Return the ``User`` with this name, or raise ``NotFound``."""

    async def list():
        """Return every ``User``, ordered by id."""

    async def rename(user_id, new_name, now=None):
        """Rename and return the updated ``User``; ``NotFound`` / ``AlreadyExists``."""

    async def delete(user_id):
        """Delete the user; ``NotFound``; ``UserHasNodes`` if it still owns nodes
        (pre-auth keys of the user are deleted with it)."""


class INodeStore(Interface):
    """Nodes. Machine key, node key and given name are each unique."""

    async def create(node, audit_event=None):
        """Insert a ``Node`` (its ``id`` is ignored) and return the stored row with its new id.
        ``AlreadyExists`` on a duplicate machine key, node key or given name. ``audit_event(stored)``,
        if given, returns the creation's ``AuditEvent`` (or ``None``), written in the same transaction."""

    async def get(node_id):
        """Return the ``Node`` with this id, or raise ``NotFound``."""

    async def get_by_machine_key(machine_key):
        """Return the ``Node`` with this machine key, or ``None``."""

    async def get_by_node_key(node_key):
        """Return the ``Node`` with this node key, or ``None``."""

    async def list(user_id=None):
        """Return every ``Node`` (of one user if given), ordered by id."""

    async def update(node_id, **fields):
        """Set the named ``Node`` attributes and return the updated row; ``NotFound``;
        ``AlreadyExists`` if a unique field collides."""

    async def delete(node_id):
        """Delete the node; ``NotFound`` if absent."""

    async def allocated_ips():
        """Return the set of every IPv4 and IPv6 address (text) held by a node."""

    async def addresses_after(after_id, held=()):
        """Return ``(addresses, highest_id)``: the addresses of nodes with an id above ``after_id`` and
        those of ``held`` that some node holds, and the highest node id read (at least ``after_id``)."""


class IPreAuthKeyStore(Interface):
    """Pre-auth keys, stored as prefix + hash."""

    async def create(user_id, prefix, key_hash, reusable, ephemeral, tags, expiration, now=None):
        """Insert and return the ``PreAuthKey``."""

    async def get(key_id):
        """Return the ``PreAuthKey`` with this id, or raise ``NotFound``."""

    async def get_by_prefix(prefix):
        """Return the ``PreAuthKey`` with this prefix, or ``None``."""

    async def list(user_id=None):
        """Return every ``PreAuthKey`` (of one user if given), ordered by id."""

    async def mark_used(key_id):
        """Set ``used``; return the updated ``PreAuthKey``."""

    async def expire(key_id, now):
        """Set ``expiration`` to ``now``; return the updated ``PreAuthKey``; ``NotFound``."""

    async def delete(key_id):
        """Delete the key; ``NotFound`` if absent."""


class IApiKeyStore(Interface):
    """API keys, stored as prefix + hash."""

    async def create(prefix, key_hash, expiration, now=None):
        """Insert and return the ``ApiKey``."""

    async def get_by_prefix(prefix):
        """Return the ``ApiKey`` with this prefix, or ``None``."""

    async def list():
        """Return every ``ApiKey``, ordered by id."""

    async def expire(key_id, now):
        """Set ``expiration`` to ``now``; return the updated ``ApiKey``; ``NotFound``."""

    async def delete(key_id):
        """Delete the key; ``NotFound`` if absent."""

    async def touch(key_id, now):
        """Record ``last_seen``."""


class IPolicyStore(Interface):
    """Policy documents for ``policy.mode: database``."""

    async def get_latest():
        """Return the newest ``PolicyRecord``, or ``None``."""

    async def set(data, now=None):
        """Store a new policy text and return its ``PolicyRecord``."""


class IServerStateStore(Interface):
    """Small server-wide values shared by every instance on one database
    (e.g. the pepper used to hash key secrets)."""

    async def get(name):
        """Return the value (``bytes``) or ``None``."""

    async def get_or_create(name, factory):
        """Return the stored value, storing ``factory()`` first if absent (race-safe)."""


class ILeaseStore(Interface):
    """Named leases several instances contend for; each new tenure gets a larger token."""

    async def acquire(name, holder, duration, now=None):
        """Take or renew the lease; return the ``Lease`` or ``None`` while another holder's is live."""

    async def get(name):
        """Return the latest ``Lease`` of that name, or ``None``."""

    async def release(lease, now=None):
        """End the tenure now if it is still live; return whether it was."""


class IInstanceStore(Interface):
    """The instances serving one database, each keeping its row alive with a heartbeat."""

    async def heartbeat(instance_id, lifetime, *, software_version="", schema_version=0, server_url="",
                        derp_url="", now=None):
        """Write or renew the instance's row, live for ``lifetime`` seconds; return the ``Instance``."""

    async def live(now=None):
        """Return the live ``Instance`` rows, by id."""

    async def get(instance_id):
        """Return the instance's row, live or not, or ``None``."""

    async def remove(instance_id):
        """Delete the instance's row; return whether there was one."""

    async def prune(now=None):
        """Delete rows long expired; return how many."""


class INodeSessionStore(Interface):
    """Which instance holds a map stream of which node; online means a row on a live instance."""

    async def open(node_id, instance_id, since):
        """Record that the node streams on the instance, online since ``since``."""

    async def close(node_id, instance_id):
        """Delete the node's row of the instance; return whether there was one."""

    async def rows(node_id, now=None):
        """Return the node's rows on live instances: instance id to ``connected_at``."""

    async def online(now=None):
        """Return every node with a row on a live instance: node id to (instance id to ``connected_at``)."""

    async def forget(instance_ids=(), now=None):
        """Delete the rows of those instances and of expired ones; return the node ids deleted."""


class IAcmeStore(Interface):
    """The built-in ACME client's account keys, certificates and live challenges, shared by instances."""

    async def account_key(directory_url, create, now=None):
        """Return the account key (PEM bytes), storing ``create()`` first if there is none (race-safe)."""

    async def certificate(hostname):
        """Return the ``StoredCertificate`` for ``hostname`` or ``None``."""

    async def store_certificate(hostname, chain_pem, key_pem, lease, now=None):
        """Store a certificate if ``lease`` is the live tenure; return its new serial, else ``None``."""

    async def add_challenges(challenges, lease, now=None):
        """Publish ``StoredChallenge`` answers if ``lease`` is the live tenure; return whether they were."""

    async def remove_challenges(keys):
        """Withdraw the challenges named by ``(kind, name)`` pairs."""

    async def poll(hostname, now=None):
        """Return ``(certificate serial or None, live challenges)``."""


class IAuthRequestStore(Interface):
    """Pending auth requests (interactive registrations, SSH checks), capped and expiring."""

    async def create(*, auth_id, kind, source, machine_key="", node_key="", hostname="", details=None,
                     expires_at, max_per_source, max_total, now=None):
        """Insert a pending request; ``LimitReached`` past either cap."""

    async def get(auth_id):
        """Return the ``AuthRequest`` with this auth id, or ``None``."""

    async def get_by_id(request_id):
        """Return the ``AuthRequest`` with this row id, or ``None``."""

    async def find_pending(kind, machine_key, node_key, now=None):
        """Return the newest unexpired pending request for this machine and node key, or ``None``."""

    async def count_pending(source=None, now=None):
        """Count unexpired pending requests (of one source if given)."""

    async def finish(auth_id, state, *, user_id=None, reason="", now=None):
        """Move a pending request to approved/rejected; ``NotFound`` or ``Conflict`` otherwise."""

    async def set_node(auth_id, node_id):
        """Record the node a finished registration created or updated."""

    async def reopen(auth_id):
        """Put an approved registration without a node back to pending; return whether it was."""

    async def delete_expired(now=None):
        """Delete requests past their expiry; return how many."""


class IOIDCLoginStore(Interface):
    """OpenID sign-ins in progress (started logins, confirmations): taken once, capped, expiring."""

    async def add(kind, key, auth_id, *, created_at, expires_at, limit, nonce="", code_verifier=None,
                  pkce_method="", identity=None):
        """Keep a row of ``kind`` found by ``key``; past ``limit`` rows of that kind the oldest go."""

    async def take(kind, key):
        """Return the ``OIDCLogin`` of ``kind`` found by ``key`` and delete it; ``None`` if absent or taken."""

    async def count(kind=None):
        """Count the rows (of one kind if given)."""

    async def delete_expired(now=None):
        """Delete rows past their expiry; return how many."""


class IAuditEventStore(Interface):
    """The audit log's rows: appended, read with filters, deleted past the retention."""

    async def add(event, lease=None):
        """Append one ``AuditEvent`` (with ``lease``: only while that tenure is live); return whether it was."""

    async def add_many(events):
        """Append several ``AuditEvent`` objects in one transaction."""

    async def list(*, since=None, until=None, actor="", action="", target="", limit=100):
        """The newest matching events, newest first."""

    async def delete_before(cutoff, batch=1000):
        """Delete at most ``batch`` events older than ``cutoff``; return how many."""


class IDatabase(Interface):
    """An open, migrated database: one attribute per table area."""

    # The annotations are for mypy (a caller holding an IDatabase sees the store interfaces);
    # zope sees the Attributes.
    users: IUserStore = Attribute("the IUserStore")
    nodes: INodeStore = Attribute("the INodeStore")
    preauthkeys: IPreAuthKeyStore = Attribute("the IPreAuthKeyStore")
    apikeys: IApiKeyStore = Attribute("the IApiKeyStore")
    policies: IPolicyStore = Attribute("the IPolicyStore")
    server_state: IServerStateStore = Attribute("the IServerStateStore")
    auth_requests: IAuthRequestStore = Attribute("the IAuthRequestStore")
    leases: ILeaseStore = Attribute("the ILeaseStore")
    instances: IInstanceStore = Attribute("the IInstanceStore")
    node_sessions: INodeSessionStore = Attribute("the INodeSessionStore")
    acme: IAcmeStore = Attribute("the IAcmeStore")
    oidc_logins: IOIDCLoginStore = Attribute("the IOIDCLoginStore")
    audit: IAuditEventStore = Attribute("the IAuditEventStore")

    async def close():
        """Finish in-flight work and close every connection."""


class INodeNotifier(Interface):
    """
    Tells the map sessions that something changed (domain → sessions), and
    opens them (web → domain).

    Everything the domain (registrar, node and user admin, lifecycle, cluster
    feed, control plane) and the web layer call on the notifier is declared
    here; :class:`~headscale_tw.control.notifier.MapNotifier` implements it.
    """

    sessions = Attribute("Live map sessions by node id (``dict[int, list[MapSession]]``), for metrics.")
    map_counters = Attribute("The ``MapCounters`` of messages built and sent and of lite updates.")
    held = Attribute("Changes waiting for the next batch flush (an ``int``, for metrics).")

    def open_stream(node_id, write, finish, unsent=None, abort=None, encoding="zstd"):
        """Start a streaming map session (full map first, then deltas); return the ``MapSession``."""

    def one_shot(node_id, encoding="zstd"):
        """The framed full map for a non-streaming request (``bytes``)."""

    def is_connected(node_id):
        """True while the node has a live stream here."""

    def node_added(node_id):
        """A node was registered; peers get it in ``PeersChanged``."""

    def node_changed(node_id, self_too=True):
        """A node's peer-visible data changed; peers get its entry, its own sessions ``Node`` if ``self_too``."""

    def node_patched(node_id, fields):
        """Only patchable fields (``Endpoints``, ``DERPRegion``, keys, ``Cap``) changed; peers get a patch."""

    def node_removed(node_id):
        """A node was deleted; peers get ``PeersRemoved`` and its own streams end."""

    def user_changed(user_id):
        """A user changed (renamed); its nodes' entries and the policy views are sent again."""

    def push(changes, touched=(), exclude=None):
        """Send policy differences (a ``Changes``) plus entries of ``touched`` nodes; return messages built now."""

    def policy_changed():
        """Every session gets a fresh full map."""

    def broadcast(message):
        """Send one message (``bytes``) to every session (e.g. a new DERP map)."""

    def send_each(message_for):
        """Send every streaming node its own message, ``message_for(node_id)``."""

    def cancel_offline_grace(node_id):
        """Forget a pending "went offline" for a node that streams again (maybe on another instance)."""

    def announce_online(node_id, online):
        """Tell every stream that sees the node that it came online or went offline."""

    def stop():
        """Close every session and cancel every timer (shutdown)."""


class IPollService(Interface):
    """``/machine/map`` requests as the web layer hands them to the domain."""

    def authenticate(machine_key, request):
        """The node for ``request.node_key``; ``NotFound`` or ``Unauthorized`` unless it is the peer's machine."""

    async def apply(node, request):
        """Store what the MapRequest reports and tell peers; return the updated node."""


class ITailnetPolicy(Interface):
    """
    The policy in force and each node's view of the tailnet, as its callers use it.

    Implemented by :class:`~headscale_tw.control.policy.TailnetPolicy`. It never
    pushes anything: the methods that change views return the differences
    (``Changes``) for the caller to hand the notifier, and the reads change nothing.
    """

    uniform = Attribute("True with no policy: allow all, every node sees every other the same way.")
    engine = Attribute("The parsed policy in force (a ``PolicyEngine``; compared by identity).")
    mode = Attribute("``policy.mode``: ``'file'`` or ``'database'``.")
    path = Attribute("``policy.path`` (file mode; ``''``: none).")
    election = Attribute("The HA route election the views are built with (a ``RouteElection``).")
    compile_seconds = Attribute("A histogram of seconds per policy compilation.")

    async def load():
        """Read the policy source and build every node's view; ``PolicyRejected`` if invalid."""

    def get_policy():
        """The text of the policy in force (``''``: none)."""

    def check_policy(text):
        """Validate ``text`` without applying it; ``PolicyRejected`` naming the problem."""

    async def set_policy(text):
        """Validate, store and apply ``text``; return the ``Changes``. ``PolicyUpdateRefused`` in file mode."""

    async def reload():
        """Re-read the source; return the ``Changes``, or None when the policy stayed the same."""

    def update(node_ids=()):
        """Take in changes of ``node_ids``, online state and users; return the ``Changes``."""

    def peer_ids(node_id):
        """The ids ``node_id`` sees as peers, sorted."""

    def sees(viewer_id, node_id):
        """Whether ``viewer_id`` has ``node_id`` among its peers."""

    def watchers(node_id):
        """The nodes that may see ``node_id``, or None for every node / not known."""

    def variant(viewer_id, node_id):
        """``(AllowedIPs, PrimaryRoutes)`` of ``node_id`` as ``viewer_id`` sees it."""

    def filter_bytes(node_id):
        """The node's ``PacketFilter`` as JSON bytes."""

    def ssh_bytes(node_id):
        """The node's ``SSHPolicy`` as JSON bytes, or None."""

    def self_view(node_id):
        """``(AllowedIPs, PrimaryRoutes, policy caps)`` of the node's own entry."""

    def ssh_check_period(src_id, dst_id):
        """Seconds an SSH check from ``src_id`` to ``dst_id`` stays good, or None when no rule applies."""

    def primary_routes(node_id):
        """The subnet prefixes ``node_id`` is primary for, as strings."""

    async def auto_approve(node_id):
        """Store the announced routes ``autoApprovers`` allow; True if any were (the caller notifies)."""

    def defines_tag(tag):
        """Whether the policy declares ``tag`` (True with no policy)."""

    def may_own_tags(tags, user_id, node_tags=()):
        """The tags of ``tags`` the user or node may not own (empty: all permitted)."""
