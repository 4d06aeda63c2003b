# -*- test-case-name: tests.control.test_ssh_check -*-
"""
Tailscale SSH check mode: the verdicts behind ``GET /machine/ssh/action/<src>/to/<dst>``.

A policy ``ssh`` rule with ``"action": "check"`` reaches the destination node
as a ``holdAndDelegate`` action (:func:`~headscale_tw.policy.ssh.ssh_check_action`).
When somebody connects, that node's ``tailscaled`` substitutes ``$SRC_NODE_ID``,
``$DST_NODE_ID`` and ``$LOCAL_USER`` into the URL and fetches it over its Noise
channel (``ssh/tailssh``'s ``fetchSSHAction``: a GET, retried with backoff on
any status but 200, for up to 30 minutes). It then follows the answer, a
``tailcfg.SSHAction``: ``accept``, ``reject`` or another ``holdAndDelegate``,
whose ``message`` it shows the person as an SSH banner.

:meth:`SSHChecks.action` answers:

* the first fetch (no ``auth_id``): ``accept`` at once when the source's user
  (or the tagged source node) was approved for this destination within the
  rule's ``checkPeriod``; else a new pending auth request of kind ``ssh_check``
  bound to the (source, destination) pair, and a ``holdAndDelegate`` to the same
  route with its ``auth_id``, whose message names ``<server_url>/auth/<auth_id>``
  (there the person signs in with the OIDC provider, or an administrator runs
  ``headscale auth approve|reject --auth-id <auth_id>``);
* the follow-up (with ``auth_id``): the request is held until the auth request
  is approved (``accept``, remembered for the period) or rejected (``reject``),
  at most :data:`HOLD_TIMEOUT` seconds; still pending, the answer is the same
  ``holdAndDelegate`` without a message, so the client asks again at once. A
  check that expired unanswered (the auth requests' lifetime) gets ``reject``,
  so no connection waits longer than that lifetime and one hold.

The policy alone decides whether a check applies and for how long (the query
string is the client's to change): a pair no ``check`` rule covers, an unknown
source node, or an auth id bound to another pair gets ``reject``. The node
asking must be the destination (its machine key is the Noise peer's).

Approvals are remembered in memory (:class:`ApprovalMemory`, bounded) by the
instance that answers the follow-up, as Headscale does; a policy change forgets
them. Pending requests live in the database (:mod:`~headscale_tw.control.authrequests`)
with their caps and lifetime, so an approval made through any instance releases
the waiting fetch.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from twisted.logger import Logger

from headscale_tw.control.authrequests import AuthRequests
from headscale_tw.control.poll import Unauthorized
from headscale_tw.errors import HeadscaleError, InvalidInput, LimitReached, NotFound
from headscale_tw.storage.models import AuthRequest

__all__ = ["ApprovalMemory", "NotSourceOwner", "SSHChecks", "HOLD_TIMEOUT", "MAX_REMEMBERED", "action_path"]

HOLD_TIMEOUT = 50.0
"""Seconds a follow-up fetch is held before it is told to ask again (under common proxy read timeouts)."""

MAX_REMEMBERED = 4096
"""Approvals remembered at most; the oldest is forgotten first."""

_NODE_ID = re.compile(r"^[0-9]{1,19}$")
_AUTH_ID = re.compile(r"^[A-Za-z0-9]{1,64}$")
_MAX_LOCAL_USER = 256


class NotSourceOwner(HeadscaleError):
    """The person who signed in does not own the node the SSH connection comes from."""


def action_path(src_id: int | str, dst_id: int | str) -> str:
    """The route's path for a pair (``$SRC_NODE_ID``/``$DST_NODE_ID`` placeholders accepted)."""
    return f"/machine/ssh/action/{src_id}/to/{dst_id}"


def _node_id(text: str, name: str) -> int:
    if not _NODE_ID.match(text) or not 0 < int(text) < 2**63:
        raise InvalidInput(f"{name}: {text[:40]!r} is not a node id")
    return int(text)


def _accept() -> dict:
    return {"accept": True, "allowAgentForwarding": True, "allowLocalPortForwarding": True,
            "allowRemotePortForwarding": True}


def _reject(message: str) -> dict:
    return {"reject": True, "message": f"# {message}\n"}


def _expired() -> dict:
    return _reject("SSH refused: the check was not approved in time; connect again for a new one.")


class ApprovalMemory:
    """When a source was last approved for a destination, under which policy; bounded."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self._limit = limit
        self._approved: OrderedDict[tuple, tuple[datetime, object]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._approved)

    def remember(self, key: tuple, now: datetime, policy: object) -> None:
        """Record an approval for ``key`` at ``now`` under the policy object ``policy``."""
        self._approved.pop(key, None)
        self._approved[key] = (now, policy)
        while len(self._approved) > self._limit:
            self._approved.popitem(last=False)

    def recent(self, key: tuple, now: datetime, period: float, policy: object) -> bool:
        """Whether ``key`` was approved less than ``period`` seconds ago, under this very policy."""
        entry = self._approved.get(key)
        if entry is None:
            return False
        when, approved_under = entry
        if approved_under is not policy or now - when >= timedelta(seconds=period):
            del self._approved[key]
            return False
        return True


class SSHChecks:
    """Answers the SSH action route.

    :param state: the :class:`~headscale_tw.control.state.ControlState` (nodes by id).
    :param policy: the :class:`~headscale_tw.control.policy.TailnetPolicy` (``ssh_check_period``, ``engine``).
    :param notifier: the :class:`~headscale_tw.control.notifier.MapNotifier`: a node whose join is
        still held in a batch is taken into the policy (its changes pushed) before the policy is asked.
    :param auth_requests: the pending auth requests.
    :param server_url: the server's public URL (the approval page and the action URL).
    """

    log = Logger()

    def __init__(self, state, policy, notifier, auth_requests: AuthRequests, server_url: str,
                 hold_timeout: float = HOLD_TIMEOUT, memory: ApprovalMemory | None = None) -> None:
        self.state = state
        self.policy = policy
        self.notifier = notifier
        self.auth_requests = auth_requests
        self.server_url = server_url.rstrip("/")
        self.hold_timeout = hold_timeout
        self.memory = memory if memory is not None else ApprovalMemory()

    def auth_url(self, auth_id: str) -> str:
        """The page where a check is approved: ``<server_url>/auth/<auth_id>``."""
        return f"{self.server_url}/auth/{auth_id}"

    async def pending(self, auth_id: str) -> AuthRequest | None:
        """The open SSH check with this auth id, or ``None``."""
        row = await self.auth_requests.get(auth_id)
        if row is None or row.kind != "ssh_check" or row.state_at(self.state.now()) != "pending":
            return None
        return row

    async def approve_as(self, auth_id: str, user_id: int) -> AuthRequest:
        """Approve the open check ``auth_id`` for the person ``user_id`` who signed in with the provider.

        Only the owner of the source node may (as in Headscale): a check is the
        person at the keyboard proving who they are, so anybody else's sign-in
        proves nothing. The waiting fetch is answered ``accept``.

        :raises NotFound: no open SSH check with this id.
        :raises NotSourceOwner: the source node is tagged, gone, or another user's.
        """
        row = await self.pending(auth_id)
        if row is None:
            raise NotFound(f"no pending SSH check with auth id \"{auth_id}\"")
        src = self.state.nodes.get(row.details.get("src_node_id"))
        if src is None or src.tags or src.user_id != user_id:
            raise NotSourceOwner(f"user {user_id} does not own the source node of SSH check {auth_id}")
        return await self.auth_requests.approve(auth_id, user_id=user_id)

    async def action(self, machine_key: str, src_text: str, dst_text: str, query: Mapping[str, str],
                     source: str = "") -> dict:
        """The ``tailcfg.SSHAction`` (as JSON) for one fetch of the action URL.

        :param machine_key: the Noise peer's machine key; it must be the destination's.
        :param query: the URL's query (``auth_id`` on a follow-up, ``local_user``).
        :param source: the client address (the per-source cap of pending requests).
        :raises InvalidInput: a node id or the auth id is malformed.
        :raises NotFound: the destination node does not exist.
        :raises Unauthorized: the Noise peer is not the destination node.
        """
        src_id = _node_id(src_text, "source node id")
        dst_id = _node_id(dst_text, "destination node id")
        auth_id = query.get("auth_id", "")
        if auth_id and not _AUTH_ID.match(auth_id):
            raise InvalidInput(f"auth_id: {auth_id[:40]!r} is not an auth id")
        local_user = query.get("local_user", "")[:_MAX_LOCAL_USER]
        dst = self.state.nodes.get(dst_id)
        if dst is None:
            raise NotFound(f"destination node {dst_id} not found")
        if dst.machine_key != machine_key:
            raise Unauthorized(f"only node {dst_id} itself may ask for SSH actions to it")
        src = self.state.nodes.get(src_id)
        if src is None:
            return _reject(f"SSH refused: source node {src_id} is not known to this server.")
        # reads of the policy do not catch up: nodes that joined in a held batch are taken in here
        self.notifier.push(self.policy.update([src_id, dst_id]))
        period = self.policy.ssh_check_period(src_id, dst_id)
        if period is None:
            return _reject(f"SSH refused: the tailnet policy has no SSH check rule from node {src_id} "
                           f"to node {dst_id}.")
        key = self._approval_key(src, dst_id)
        if not auth_id:
            if period > 0 and self.memory.recent(key, self.state.now(), period, self.policy.engine):
                self.log.info("SSH check from node {src} to node {dst}: approved within the check period",
                              src=src_id, dst=dst_id)
                return _accept()
            return await self._hold(src, dst, source, local_user)
        row = await self.auth_requests.get(auth_id)
        if row is not None and (row.kind != "ssh_check" or not self._bound_to(row, src_id, dst_id)):
            return _reject("SSH refused: this check belongs to another connection.")
        if row is None or row.state_at(self.state.now()) == "expired":
            return _expired()  # unanswered within its lifetime (then swept), or an id never issued
        row = await self.auth_requests.wait(row, self.hold_timeout)
        return self._verdict(row, src, dst, key)

    def _verdict(self, row: AuthRequest, src, dst, key: tuple) -> dict:
        """The answer once the wait for ``row`` ended (settled or timed out)."""
        state = row.state_at(self.state.now())
        if state == "rejected":
            self.log.info("SSH check {auth_id} from node {src} to node {dst} rejected",
                          auth_id=row.auth_id, src=src.id, dst=dst.id)
            return _reject(f"SSH refused: {row.reason or 'the check was rejected'}.")
        if state == "expired":
            return _expired()
        if state == "pending":
            return {"holdAndDelegate": self._hold_url(row.auth_id)}
        period = self.policy.ssh_check_period(src.id, dst.id)
        if period is None:  # the policy changed while the person was approving
            return _reject(f"SSH refused: the tailnet policy has no SSH check rule from node {src.id} "
                           f"to node {dst.id}.")
        if period > 0:
            self.memory.remember(key, self.state.now(), self.policy.engine)
        self.log.info("SSH check {auth_id} from node {src} to node {dst} approved",
                      auth_id=row.auth_id, src=src.id, dst=dst.id)
        return _accept()

    async def _hold(self, src, dst, source: str, local_user: str) -> dict:
        """Open a pending check for the pair; the ``holdAndDelegate`` that waits on it."""
        details: dict[str, Any] = {"src_node_id": src.id, "dst_node_id": dst.id, "local_user": local_user,
                                   "src_user_id": None if src.tags else src.user_id}
        try:
            row = await self.auth_requests.open("ssh_check", source, hostname=src.given_name or src.hostname,
                                                details=details)
        except LimitReached as e:
            self.log.warn("SSH check from node {src} to node {dst} refused: {reason}",
                          src=src.id, dst=dst.id, reason=str(e))
            return _reject(f"SSH refused: {e}")
        url = self.auth_url(row.auth_id)
        self.log.info("SSH check {auth_id} from node {src} to node {dst} as {local_user!r} waits for approval",
                      auth_id=row.auth_id, src=src.id, dst=dst.id, local_user=local_user)
        return {
            "holdAndDelegate": self._hold_url(row.auth_id),
            "message": ("# This SSH connection needs an additional check.\n"
                        f"# To approve it, visit: {url}\n"
                        f"# (or an administrator runs: headscale auth approve --auth-id {row.auth_id})\n"),
        }

    def _hold_url(self, auth_id: str) -> str:
        # The client substitutes the placeholders; auth ids are letters and digits only.
        return (self.server_url + action_path("$SRC_NODE_ID", "$DST_NODE_ID")
                + f"?auth_id={auth_id}&local_user=$LOCAL_USER")

    @staticmethod
    def _approval_key(src, dst_id: int) -> tuple:
        """A user's approval covers all of their nodes; a tagged node's only itself."""
        if not src.tags and src.user_id is not None:
            return ("user", src.user_id, dst_id)
        return ("node", src.id, dst_id)

    @staticmethod
    def _bound_to(row: AuthRequest, src_id: int, dst_id: int) -> bool:
        return row.details.get("src_node_id") == src_id and row.details.get("dst_node_id") == dst_id
