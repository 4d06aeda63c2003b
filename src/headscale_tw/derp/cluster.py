# -*- test-case-name: tests.derp.test_cluster -*-
"""
The DERP mesh of the instances sharing one database: :class:`DERPMeshMembership`.

Every instance with the embedded DERP server and a mesh key writes its DERP URL
into its ``instances`` row (:class:`~headscale_tw.control.instances.InstanceRegistry`).
When the set of live instances changes, the registry calls
:meth:`DERPMeshMembership.membership_changed`, which

* starts a mesh link (:func:`~headscale_tw.derp.mesh.mesh_peer_service`) to each
  instance that joined and stops the link to each one that left; links are
  children of this service, so they start and stop with the service tree;
* hands every live instance, this one included, ``(instance id, DERP URL)``,
  oldest first (``started_at``, then id), to ``on_nodes`` (the DERP map
  provider's :meth:`~headscale_tw.derp.derpmap.DERPMapProvider.set_instance_nodes`),
  which makes each one a node of our region, in that order, and pushes the new
  map to clients. Every instance computes the same order, so every client of
  the tailnet gets the same map and homes on the same (first) node while it is
  healthy; the mesh carries packets only for clients that fell back to another
  node (``tailcfg.DERPRegion.Nodes``: "each user/domain should get the same
  preferred node order").

Static ``derp.server.mesh_peers`` keep their own links: a URL listed there is
not linked a second time. An instance advertising our own DERP URL (instances
behind one load balancer sharing ``server_url`` and no
``derp.server.advertise_url``) is neither linked nor listed, with a warning:
each instance needs a URL that reaches it and only it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import IService, MultiService
from twisted.internet import defer
from twisted.logger import Logger

from .mesh import mesh_peer_endpoint, mesh_peer_service
from .server import DERPServer

__all__ = ["DERPMeshMembership", "mesh_link_factory"]


def mesh_link_factory(server: DERPServer, reactor: Any) -> Callable[[str], IService]:
    """Build the mesh link service to a DERP URL (retry every 5 s, like static ``mesh_peers``)."""
    def link(url: str) -> IService:
        endpoint, host_header, path = mesh_peer_endpoint(reactor, url)
        return mesh_peer_service(server, endpoint, host_header, reactor, path=path)

    return link


class DERPMeshMembership(MultiService):
    """
    Mesh links to every other live instance, and the DERP map nodes of all of them.

    :param instance_id: this instance's id (its own row is skipped).
    :param own_url: this instance's DERP URL (another row advertising it is skipped).
    :param link: builds the link service to a peer's DERP URL (:func:`mesh_link_factory`).
    :param on_nodes: called with the live instances, ``(id, DERP URL)`` oldest first,
        this one included, whenever they change.
    :param static_peers: ``derp.server.mesh_peers``, linked elsewhere.
    """

    log = Logger()

    def __init__(self, instance_id: str, own_url: str, link: Callable[[str], IService],
                 on_nodes: Callable[[Sequence[tuple[str, str]]], Any] = lambda nodes: None,
                 static_peers: Iterable[str] = ()) -> None:
        super().__init__()
        self.instance_id = instance_id
        self.own_url = own_url
        self._link = link
        self._on_nodes = on_nodes
        self._static = frozenset(_same(url) for url in static_peers)
        #: Live links by peer DERP URL.
        self.links: dict[str, IService] = {}
        self._nodes: tuple[tuple[str, str], ...] = ()
        self._stopping: set[defer.Deferred] = set()
        self._ids: dict[str, str] = {}
        self._warned: set[tuple[str, str]] = set()

    def membership_changed(self, membership: Any) -> None:
        """Follow a :class:`~headscale_tw.control.instances.Membership`: links and map nodes."""
        if not self.running:
            return
        wanted: dict[str, str] = {}  # another instance's DERP URL -> its id
        nodes: list[tuple[str, str]] = []
        claimed = {_same(self.own_url)}
        live_ids = {instance.id for instance in membership.live}
        self._warned = {(ident, url) for ident, url in self._warned if ident in live_ids}  # warn again if back
        for instance in sorted(membership.live, key=lambda i: (i.started_at, i.id)):
            url = instance.derp_url
            if not url:
                continue
            if instance.id == self.instance_id:
                nodes.append((instance.id, url))
                continue
            problem = _problem(url)
            if problem is not None or _same(url) in claimed:
                self._warn(instance.id, url, problem)
                continue
            claimed.add(_same(url))
            wanted[_same(url)] = instance.id
            nodes.append((instance.id, url))
        for url in [u for u in self.links if u not in wanted]:
            self.log.info("DERP mesh: instance {id} left, closing the link to {url}", id=self._ids.get(url), url=url)
            self._unlink(url)
        self._ids = dict(wanted)
        for url, ident in wanted.items():
            if url not in self.links and url not in self._static:
                try:
                    service = self._link(url)
                except ValueError as e:
                    self._warn(ident, url, str(e))
                    continue
                self.log.info("DERP mesh: instance {id} joined, linking to {url}", id=ident, url=url)
                self.links[url] = service
                service.setServiceParent(self)
        if tuple(nodes) != self._nodes:
            self._nodes = tuple(nodes)
            self._on_nodes(self._nodes)

    def _unlink(self, url: str) -> None:
        stopped = self.links.pop(url).disownServiceParent()
        if isinstance(stopped, defer.Deferred):
            self._stopping.add(stopped)
            stopped.addErrback(lambda f: self.log.failure("DERP mesh: stopping the link to {url} failed", f, url=url))
            stopped.addBoth(lambda _: self._stopping.discard(stopped))

    def _warn(self, ident: str, url: str, problem: str | None) -> None:
        if (ident, url) in self._warned:
            return
        self._warned.add((ident, url))
        self.log.warn("DERP mesh: not linking instance {id} at {url}: {why}", id=ident, url=url,
                      why=problem or "another live instance (or this one) advertises the same DERP URL; "
                                     "set derp.server.advertise_url to a URL reaching only that instance")

    def stopService(self) -> defer.Deferred:
        """Stop every link, including those stopping after their instance left."""
        stopping = [super().stopService(), *self._stopping]
        return defer.gatherResults(stopping, consumeErrors=True).addCallback(lambda _: None)


def _problem(url: str) -> str | None:
    """What is wrong with an advertised DERP URL, or ``None``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as e:
        return f"not a valid URL ({e})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "not an http(s) URL with a host"
    return None


def _same(url: str) -> str:
    """``url`` as compared with others: without a trailing slash."""
    return url.rstrip("/")
