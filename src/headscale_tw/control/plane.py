# -*- test-case-name: tests.control.test_plane -*-
"""
One object holding the whole control plane, for ``service.py`` to build.

    plane = ControlPlane(config, db, clock, derp_map=provider)
    await plane.start()                       # loads nodes/users, marks used IPs, loads the policy
    # the web layer builds /machine, /register and /auth from the plane's parts
    # (headscale_tw.web.plane_resources); the plane imports nothing from web/
    for interval, job in plane.periodic_jobs(): TimerService(interval, job) with .clock set
    await plane.reload()                      # SIGHUP: policy file (or DB row) and DNS extra records
    plane.stop()                              # on stopService: ends streams, cancels timers

Several instances on one PostgreSQL database: ``ControlPlane(..., cluster=ClusterLink(...))``
builds the shared presence (``plane.presence``, given to the notifier), an HA
election ranked from shared state (given to the policy manager), the lifecycle
jobs under their leases, and ``plane.cluster`` (a
:class:`~headscale_tw.control.cluster.ClusterSync`) for the change feed and the
instance registry to call; all at construction.

Brute-force throttles (:class:`~headscale_tw.throttle.AuthThrottles`) are
``plane.throttles``: the registrar uses ``preauth_key``; ``service.py`` hands
``api_key`` to the admin API and ``noise_handshake`` to ``/ts2021``; one of
the periodic jobs logs their per-source summaries and records them in the
audit log (``plane.audit``, one row per source and interval), another prunes
that log past ``audit.retention``.

Admin operations for the API/CLI: ``plane.admin.policy`` (``current()``,
``await set(text)``, ``check(text)``: the policy is applied and pushed),
``await plane.nodes.approve_routes(node_id, routes)``, ``plane.nodes.routes()``,
``await plane.nodes.set_tags(node_id, tags)``.

``dns_provider`` (an :class:`~headscale_tw.dnsprovider.interface.IDNSProvider`,
or ``None``) publishes the challenge records of ``tailscale cert``:
``plane.dns_challenges`` serves ``/machine/set-dns``, and the mapper offers
nodes HTTPS only when it is given.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from headscale_tw.clock import utc_now
from headscale_tw.control.admin import AdminServices, build_admin_services
from headscale_tw.control.audit import SYSTEM, AuditLog, Target, policy_detail
from headscale_tw.control.authrequests import AuthRequests
from headscale_tw.control.cluster import ClusterLink, ClusterSync
from headscale_tw.control.dns_challenges import DNSChallenges
from headscale_tw.control.election import RouteElection
from headscale_tw.control.ipalloc import IPAllocator
from headscale_tw.control.lifecycle import NodeLifecycle
from headscale_tw.control.mapper import Mapper, dns_config, parse_extra_records
from headscale_tw.control.notifier import MapNotifier
from headscale_tw.control.policy import PolicySource, TailnetPolicy
from headscale_tw.control.poll import PollService
from headscale_tw.control.presence import NodePresence
from headscale_tw.control.registration import Registrar
from headscale_tw.control.ssh_check import SSHChecks
from headscale_tw.control.state import ControlState
from headscale_tw.errors import InvalidInput
from headscale_tw.throttle import AuthThrottles

if TYPE_CHECKING:
    from headscale_tw.control.cluster import ClusterSync

__all__ = ["ControlPlane", "AUDIT_PRUNE_INTERVAL"]

#: Seconds between two runs of the audit log's retention job (each deletes at most a batch).
AUDIT_PRUNE_INTERVAL = 600.0


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


class ControlPlane:
    """Builds and owns state, mapper, notifier, registrar, poll service, admin services and lifecycle."""

    log = Logger()

    def __init__(
        self,
        config,
        db,
        clock,
        derp_map: Callable[[], dict] | None = None,
        offline_grace: float = 10.0,
        read_file: Callable[[str], str] | None = None,
        batch_delay: float | None = None,
        dns_provider=None,
        instance: str = "",
        cluster: ClusterLink | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.read_file = read_file or _read_text
        prefixes = config.prefixes
        self.allocator = IPAllocator(prefixes.v4, prefixes.v6, prefixes.allocation)
        self.state = ControlState(db, self.allocator, self.now)
        self.link = cluster
        #: This instance's node streams in the shared ``node_sessions`` table (several instances), or ``None``.
        self.presence = (NodePresence(cluster.sessions, cluster.instance_id, cluster.publish, self.state, clock)
                         if cluster is not None else None)
        # Several instances elect HA primaries from shared state only (when each router came online).
        election = RouteElection(rank=self.presence.rank) if self.presence is not None else None
        self.policy = TailnetPolicy(self.state, PolicySource(config, store=db.policies, read_file=self.read_file),
                                    election=election)
        base_domain = config.dns.base_domain if config.dns.magic_dns else ""
        self.dns_challenges = DNSChallenges(self.state, dns_provider, base_domain, clock)
        self.mapper = Mapper(self.state, config, derp_map=derp_map, policy=self.policy,
                             https=self.dns_challenges.available)
        if batch_delay is None:
            batch_delay = config.tuning.batch_change_delay
        self.notifier = MapNotifier(self.state, self.mapper, self.policy, clock, offline_grace=offline_grace,
                                    batch_delay=batch_delay, presence=self.presence)
        self.throttles = AuthThrottles.build(clock)
        #: Who did what: admin actions, registrations, expiry, failed-attempt summaries.
        self.audit = AuditLog(db.audit, self.now, instance=instance, retention=config.audit.retention)
        self.auth_requests = AuthRequests(db.auth_requests, clock, self.now)
        self.registrar = Registrar(self.state, self.notifier, self.mapper, config, clock, policy=self.policy,
                                   preauth_throttle=self.throttles.preauth_key, auth_requests=self.auth_requests,
                                   audit=self.audit)
        self.poll = PollService(self.state, self.notifier, self.policy, clock)
        #: SSH check mode: ``/machine/ssh/action/...`` and the ``/auth/<auth_id>`` page.
        self.ssh_checks = SSHChecks(self.state, self.policy, self.notifier, self.auth_requests,
                                     config.server_url)
        #: The services behind ``/api/v1``: users, keys, nodes and policy.
        self.admin: AdminServices = build_admin_services(db, self.now, state=self.state, notifier=self.notifier,
                                                         registrar=self.registrar, policy=self.policy,
                                                         clock=clock, audit=self.audit)
        self.nodes = self.admin.nodes
        self.lifecycle: NodeLifecycle | None = None
        #: Applies other instances' changes (``ChangeFeed.subscribe(cluster.changed, cluster.resync)``)
        #: and the instance registry's membership (``cluster.membership_changed``); ``None`` alone.
        self.cluster: ClusterSync | None = None
        if cluster is not None:
            self.cluster = ClusterSync(self.state, self.notifier, self.policy, cluster.publish, self.presence,
                                       derp=cluster.derp, auth_requests=self.auth_requests)

    def now(self) -> datetime:
        """The injected clock's time as an aware UTC datetime."""
        return utc_now(self.clock)

    async def start(self) -> None:
        """Load the store and the policy into memory; call once before serving.

        :raises PolicyRejected: if the configured policy is invalid (do not serve).
        """
        await self.state.load()
        await self.policy.load()
        self.reload_dns()
        self.lifecycle = NodeLifecycle(self.state, self.notifier, self.registrar, self.config, audit=self.audit,
                                       lease_for=self.link.lease_for if self.link is not None else None)

    async def reload(self) -> None:
        """SIGHUP: re-read the policy source and DNS extra records; problems are logged, old settings stay.

        A policy that changed is recorded in the audit log (``policy.reload``, by the system).
        """
        policy_admin = self.admin.policy
        assert policy_admin is not None  # built with this plane's policy
        if await policy_admin.reload():
            await self.audit.record("policy.reload", Target("policy", "", self.policy.mode), actor=SYSTEM,
                                    detail=policy_detail(self.policy.get_policy() or ""))
        self.reload_dns()

    def reload_dns(self, config=None) -> bool:
        """Rebuild the DNSConfig (re-reading ``dns.extra_records_path``); push it if it changed.

        ``config`` replaces the configuration's ``dns`` section when given.
        Returns whether clients were sent a new DNSConfig.
        """
        if config is not None:
            self.config = config
        extra: list[dict] = []
        path = self.config.dns.extra_records_path
        if path:
            try:
                extra = parse_extra_records(self.read_file(path), path)
            except (OSError, InvalidInput) as e:
                self.log.error("DNS extra records not (re)loaded, keeping the previous ones: {reason}", reason=str(e))
                return False
        message = self.mapper.set_dns(dns_config(self.config, extra))
        if message is None:
            return False
        if self.mapper.https:  # each node's DNSConfig holds its own certificate name
            self.notifier.send_each(self.mapper.dns_message)
        else:
            self.notifier.broadcast(message)
        return True

    def stop(self) -> None:
        """End every map stream and held register request; cancel every timer."""
        self.registrar.stop()
        self.notifier.stop()

    def _guarded(self, name: str, job) -> Callable[[], Deferred]:
        def run() -> Deferred:
            d = Deferred.fromCoroutine(job())
            d.addErrback(lambda f: self.log.failure("periodic job {name} failed", f, name=name))
            return d

        return run

    def _ephemeral_sweep_interval(self) -> float:
        timeout = self.config.node.ephemeral_inactivity_timeout
        return min(30.0, max(1.0, timeout / 2)) if timeout > 0 else 30.0

    def periodic_jobs(self) -> list[tuple[float, Callable[[], Deferred]]]:
        """``(interval_seconds, callable)`` pairs for ``TimerService`` (errors are logged, never raised)."""
        assert self.lifecycle is not None, "call start() first"
        return [
            (5.0, self._guarded("expire_due", self.lifecycle.expire_due)),
            # Sweep often enough that an ephemeral node outlives its inactivity
            # timeout by at most half of it (and never sweep more than once a second).
            (self._ephemeral_sweep_interval(), self._guarded("collect_ephemeral", self.lifecycle.collect_ephemeral)),
            # Expired auth requests already count against no cap; the sweep only frees their rows.
            (60.0, self._guarded("forget_stale_registrations", self.lifecycle.forget_stale_registrations)),
            (self.throttles.interval, self._guarded("summarize_throttles", self._summarize_throttles)),
            (AUDIT_PRUNE_INTERVAL, self._guarded("prune_audit_log", self.audit.prune)),
        ]

    async def _summarize_throttles(self) -> None:
        summaries: list = []
        self.throttles.summarize(summaries)
        await self.audit.record_failures(summaries)
