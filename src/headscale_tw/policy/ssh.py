# -*- test-case-name: tests.policy.test_compile -*-
"""
Compile the policy's ``ssh`` section into the ``SSHPolicy`` sent to one node.

Rules are emitted only to nodes that are a destination of the rule. Each rule
becomes ``{"principals": [{"nodeIP": ...}], "sshUsers": {...}, "action": {...}}``;
``check`` rules delegate to the control server (``holdAndDelegate``) and are
placed before ``accept`` rules. ``checkPeriod`` stays on the server:
:func:`check_period` answers, for the action route, which check rule a
connection from one node to another falls under.
"""

from __future__ import annotations

__all__ = ["compile_ssh_policy", "ssh_accept_action", "ssh_check_action", "localpart_domain", "check_period",
           "DEFAULT_CHECK_PERIOD"]

from typing import TYPE_CHECKING, Any, Optional

from .ipset import IPSet
from .model import Node, SSHRule

if TYPE_CHECKING:
    from .compile import CompiledPolicy


DEFAULT_CHECK_PERIOD = 12 * 3600.0
"""Seconds a check stays good when a ``check`` rule sets no ``checkPeriod`` (Tailscale's and Headscale's 12h)."""


def ssh_accept_action() -> dict:
    return {
        "accept": True,
        "allowAgentForwarding": True,
        "allowLocalPortForwarding": True,
        "allowRemotePortForwarding": True,
    }


def ssh_check_action(server_url: str) -> dict:
    return {
        "holdAndDelegate": server_url.rstrip("/")
        + "/machine/ssh/action/$SRC_NODE_ID/to/$DST_NODE_ID?local_user=$LOCAL_USER"
    }


def localpart_domain(user: str) -> Optional[str]:
    """The domain of a canonical ``localpart:*@<domain>`` entry, else None."""
    if not user.startswith("localpart:"):
        return None
    pattern = user[len("localpart:"):]
    local, at, domain = pattern.rpartition("@")
    if not at or local != "*" or not domain:
        return None
    return domain


def _principals(addrs: IPSet) -> list[dict]:
    return [{"nodeIP": str(a)} for a in addrs.addresses()]


def _base_user_map(rule: SSHRule) -> dict[str, str]:
    m: dict[str, str] = {}
    if "autogroup:nonroot" in rule.users:
        m["*"] = "="
    m["root"] = "root" if "root" in rule.users else ""
    for u in rule.users:
        if u in ("root", "autogroup:nonroot") or localpart_domain(u) is not None:
            continue
        m[u] = u
    return m


def compile_ssh_policy(cp: "CompiledPolicy", node: Node) -> Optional[dict]:
    policy = cp.policy
    if policy is None or not policy.ssh:
        return None
    r = cp.resolver
    rules: list[dict] = []
    node_set = r.node_set(node)
    for rule in policy.ssh:
        src = r.resolve_all(rule.src)
        if not src:
            continue
        action = ssh_accept_action() if rule.action == "accept" else ssh_check_action(cp.engine.server_url)
        base = _base_user_map(rule)
        domains = [d for d in (localpart_domain(u) for u in rule.users) if d]
        localparts: dict[int, str] = {}
        for d in domains:
            for u in r.topology.users:
                local, at, dom = u.email.rpartition("@")
                if at and dom.lower() == d.lower():
                    localparts[u.id] = local

        # group source nodes per user (sorted by id) and tagged ones
        per_user: dict[int, IPSet] = {}
        tagged: list[dict] = []
        for n in r.topology.nodes:
            if not src.contains_any(n.addresses):
                continue
            if n.is_tagged:
                for _ in n.tags:
                    tagged.extend({"nodeIP": str(a)} for a in n.addresses)
                continue
            if n.user_id is None:
                continue
            per_user[n.user_id] = per_user.get(n.user_id, IPSet()) | r.node_set(n)
        user_ids = sorted(per_user)
        principals_by_user = {uid: _principals(per_user[uid]) for uid in user_ids}

        def emit(principals: list[dict], uid: Optional[int]) -> None:
            out: dict[str, Any] = {"principals": principals, "sshUsers": base, "action": action}
            if rule.accept_env:
                out["acceptEnv"] = list(rule.accept_env)
            rules.append(out)
            if uid is not None and uid in localparts:
                lp = localparts[uid]
                extra: dict[str, Any] = {"principals": principals, "sshUsers": {lp: lp}, "action": action}
                if rule.accept_env:
                    extra["acceptEnv"] = list(rule.accept_env)
                rules.append(extra)

        self_dsts = [d for d in rule.dst if d.is_autogroup("self")]
        other = [d for d in rule.dst if not d.is_autogroup("self")]
        if self_dsts and not node.is_tagged and node.user_id is not None:
            if principals_by_user.get(node.user_id):
                emit(principals_by_user[node.user_id], node.user_id)
        if other:
            dest = r.resolve_all(other)
            if dest.overlaps(node_set):
                if domains:
                    for uid in user_ids:
                        emit(principals_by_user[uid], uid)
                    if tagged:
                        emit(tagged, None)
                else:
                    allp = [p for uid in user_ids for p in principals_by_user[uid]] + tagged
                    if allp:
                        emit(allp, None)
            elif domains and src.overlaps(node_set):
                if node.is_tagged:
                    emit(_principals(node_set), None)
                elif node.user_id is not None and principals_by_user.get(node.user_id):
                    emit(principals_by_user[node.user_id], node.user_id)
    rules.sort(key=lambda x: 0 if "holdAndDelegate" in x["action"] else 1)
    return {"rules": rules}


def check_period(cp: "CompiledPolicy", src: Node, dst: Node) -> Optional[float]:
    """The check period of the first ``check`` rule letting ``src`` SSH to ``dst``; None if none does.

    0 means ``always`` (every connection is checked). Only the policy decides:
    the action URL's query is the client's to change. ``autogroup:self`` holds
    when both nodes are untagged and belong to the same user, as in
    :func:`compile_ssh_policy`.
    """
    policy = cp.policy
    if policy is None or not policy.ssh:
        return None
    r = cp.resolver
    dst_set = r.node_set(dst)
    for rule in policy.ssh:
        if rule.action != "check" or not r.resolve_all(rule.src).contains_any(src.addresses):
            continue
        same_user = not src.is_tagged and not dst.is_tagged and src.user_id is not None and src.user_id == dst.user_id
        if any(d.is_autogroup("self") for d in rule.dst) and same_user:
            return DEFAULT_CHECK_PERIOD if rule.check_period is None else rule.check_period
        other = [d for d in rule.dst if not d.is_autogroup("self")]
        if other and r.resolve_all(other).overlaps(dst_set):
            return DEFAULT_CHECK_PERIOD if rule.check_period is None else rule.check_period
    return None
