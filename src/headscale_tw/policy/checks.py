# -*- test-case-name: tests.policy.test_checks -*-
"""
Policy checks that need the tailnet's users and nodes.

* ``localpart:*@<domain>`` SSH users must name a domain some user's email has.
* ``tests``: from each ``src``, every ``accept`` destination must be reachable
  on the given port (and protocol) and every ``deny`` destination must not.
* ``sshTests``: from ``src`` to each ``dst``, the listed login users must be
  accepted / checked / denied by the compiled SSH policy.

A failure raises :obj:`PolicyError`; the service must then refuse the policy.
"""

from __future__ import annotations

__all__ = ["check_policy"]

from typing import TYPE_CHECKING, Optional

from .ipset import IPSet, parse_ip_string
from .model import Node, Policy, PolicyError
from .parse import parse_alias, parse_destination
from .ssh import localpart_domain

if TYPE_CHECKING:
    from .compile import CompiledPolicy

_DEFAULT_PROTOS = (6, 17, 1, 58)


def check_policy(cp: "CompiledPolicy") -> None:
    policy = cp.policy
    if policy is None:
        return
    domains = cp.engine.tailnet_domains(cp.topology)
    for i, rule in enumerate(policy.ssh or ()):
        for j, u in enumerate(rule.users):
            d = localpart_domain(u)
            if d is not None and d.lower() not in domains:
                raise PolicyError(
                    f"ssh[{i}].users[{j}]: {d} is not associated with this Tailnet "
                    "and cannot be used in user:*@<domain> expressions"
                )
    failures: list[str] = []
    for i, t in enumerate(policy.tests):
        failures.extend(f"tests[{i}]: {m}" for m in _run_test(cp, t))
    for i, ssh_test in enumerate(policy.ssh_tests):
        failures.extend(f"sshTests[{i}]: {m}" for m in _run_ssh_test(cp, ssh_test))
    if failures:
        raise PolicyError("test(s) failed: " + "; ".join(failures))


def _policy_of(cp: "CompiledPolicy") -> Policy:
    """The policy of ``cp``; tests only run when there is one."""
    if cp.policy is None:
        raise ValueError("no policy in force")
    return cp.policy


def _src_nodes_and_set(cp: "CompiledPolicy", text: str) -> tuple[list[Node], IPSet]:
    a = parse_alias(text)
    if a.kind == "group" and a.name not in _policy_of(cp).groups:
        raise ValueError(f"unknown group {a.name!r}")
    if a.kind == "host" and a.name not in _policy_of(cp).hosts:
        raise ValueError(f"unknown host {a.name!r}")
    if a.kind == "tag" and a.name not in _policy_of(cp).tag_owners:
        raise ValueError(f"unknown tag {a.name!r}")
    if a.kind == "user" and cp.resolver.user_for(a.name) is None:
        raise ValueError(f"unknown user {a.name!r}")
    if a.kind == "autogroup" and not (a.is_autogroup("member") or a.is_autogroup("tagged")):
        raise ValueError(f"unsupported autogroup {a.name!r}")
    s = cp.resolver.resolve(a) or IPSet()
    nodes = [n for n in cp.topology.nodes if s.contains_any(n.addresses)]
    return nodes, s


def _allowed(cp: "CompiledPolicy", src_addrs: IPSet, dst: Node, dst_ip, port: int, proto: str) -> bool:
    protos = {"tcp": (6,), "udp": (17,), "sctp": (132,)}.get(proto, (6,))
    for rule in cp.filter_for(dst):
        if rule.cap_grant:
            continue
        rp = rule.ip_proto or _DEFAULT_PROTOS
        if not any(p in rp for p in protos):
            continue
        srcs = IPSet()
        for s in rule.src_ips:
            try:
                srcs = srcs | parse_ip_string(s)
            except ValueError:
                pass
        if not srcs.overlaps(src_addrs):
            continue
        for d in rule.dst_ports:
            try:
                ds = parse_ip_string(d.ip)
            except ValueError:
                continue
            if ds.contains(dst_ip) and d.first <= port <= d.last:
                return True
    return False


def _run_test(cp: "CompiledPolicy", t) -> list[str]:
    try:
        src_nodes, src_set = _src_nodes_and_set(cp, t.src)
    except (ValueError, PolicyError) as e:
        return [f"src {t.src!r}: {e}"]
    out = []
    for want, dsts in ((True, t.accept), (False, t.deny)):
        for text in dsts:
            try:
                dest = parse_destination(text, "")
                targets = _dst_targets(cp, dest.alias)
            except (ValueError, PolicyError) as e:
                out.append(f"dst {text!r}: {e}")
                continue
            port = dest.ports[0][0]
            for node, ip in targets:
                addrs = IPSet.from_addresses(a for n in src_nodes for a in n.addresses if n.id != node.id)
                if not src_nodes:
                    addrs = src_set
                ok = bool(addrs) and _allowed(cp, addrs, node, ip, port, t.proto)
                if ok != want:
                    out.append(f"{t.src} -> {text}: {'denied' if want else 'allowed'}")
                    break
            if not targets and want:
                out.append(f"{t.src} -> {text}: no such destination")
    return out


def _dst_targets(cp: "CompiledPolicy", alias) -> list:
    if alias.kind == "group" and alias.name not in _policy_of(cp).groups:
        raise ValueError(f"unknown group {alias.name!r}")
    if alias.kind == "tag" and alias.name not in _policy_of(cp).tag_owners:
        raise ValueError(f"unknown tag {alias.name!r}")
    if alias.kind == "host" and alias.name not in _policy_of(cp).hosts:
        raise ValueError(f"unknown host {alias.name!r}")
    if alias.is_autogroup("self"):
        raise ValueError("autogroup:self is not a valid test destination")
    s = cp.resolver.resolve(alias) or IPSet()
    out = []
    for n in cp.topology.nodes:
        for a in n.addresses:
            if s.contains(a):
                out.append((n, a))
    return out


def _ssh_decision(cp: "CompiledPolicy", src: Node, dst: Node, login: str) -> str:
    pol = cp.ssh_policy_for(dst) or {"rules": []}
    ips = {str(a) for a in src.addresses}
    for rule in pol["rules"]:
        if not any(p.get("nodeIP") in ips or p.get("any") for p in rule["principals"]):
            continue
        users = rule["sshUsers"]
        local = users.get(login, users.get("*"))
        if local is None or local == "":
            continue
        if rule["action"].get("accept"):
            return "accept"
        if rule["action"].get("holdAndDelegate"):
            return "check"
        return "deny"
    return "deny"


def _run_ssh_test(cp: "CompiledPolicy", t) -> list[str]:
    try:
        src_nodes, _ = _src_nodes_and_set(cp, t.src)
    except (ValueError, PolicyError) as e:
        return [f"src {t.src!r}: {e}"]
    out = []
    for text in t.dst:
        a = parse_alias(text)
        s: Optional[IPSet]
        if a.is_autogroup("self"):
            dst_nodes = [n for n in src_nodes if not n.is_tagged]
        else:
            s = cp.resolver.resolve(a) or IPSet()
            dst_nodes = [n for n in cp.topology.nodes if s.contains_any(n.addresses)]
        for src in src_nodes:
            for dst in dst_nodes:
                if dst.id == src.id:
                    continue
                for want, users in (("accept", t.accept), ("check", t.check), ("deny", t.deny)):
                    for u in users:
                        got = _ssh_decision(cp, src, dst, u)
                        if got != want:
                            out.append(f"{src.hostname} -> {dst.hostname} as {u}: {got}, want {want}")
    return out
