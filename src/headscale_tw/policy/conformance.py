# -*- test-case-name: tests.policy.test_conformance -*-
"""
Conformance runner: compare our engine with results captured from Tailscale.

Usage::

    python -m headscale_tw.policy.conformance PATH [-v] [--category C] [--id ID]

PATH is a folder of scenario ``*.json`` files (searched recursively) or the
vendored ``policy-conformance.json.xz`` archive. For each scenario the
topology is built from the scenario's own users, nodes and addresses, the
policy is compiled with the same :obj:`PolicyEngine` the server uses, and for
every captured node we compare:

* packet filter rules (after a canonical sort; order is not meaningful),
* the set of visible peers with their ``AllowedIPs``, ``PrimaryRoutes`` and
  ``Tags``, and the node's own ``AllowedIPs``,
* the SSH policy (rule order kept, principals sorted),
* node capabilities from ``nodeAttrs`` (Tailscale's own default caps ignored),
* rejection: a policy the service refused must be refused by us.

Primary routes are an input (HA election is the control plane's job): they
are taken from what each node was told about itself.

The last line printed is ``N passed, N failed``.
"""

from __future__ import annotations

__all__ = ["load_scenarios", "run_scenario", "ScenarioResult", "main"]

import argparse
import dataclasses
import ipaddress
import json
import lzma
import os
import sys
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from .compile import CompiledPolicy, PolicyEngine
from .model import Node, PolicyError, Topology, User

#: Capabilities Tailscale's service gives every node regardless of policy.
SAAS_DEFAULT_CAPS = frozenset({
    "default-auto-update",
    "https://tailscale.com/cap/file-sharing",
    "https://tailscale.com/cap/is-admin",
    "https://tailscale.com/cap/is-owner",
    "https://tailscale.com/cap/ssh",
    "https://tailscale.com/cap/tailnet-lock",
    "probe-udp-lifetime",
    "ssh-behavior-v1",
    "ssh-env-vars",
    "store-appc-routes",
    "tailnet-display-name",
})


@dataclass
class ScenarioResult:
    id: str
    category: str
    passed: bool
    reason: str = ""


# -- loading ------------------------------------------------------------------


def load_scenarios(path: str) -> Iterator[dict]:
    """Yield scenario dicts from a folder, a ``.json.xz`` list or a ``.tar.xz``."""
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                if f.endswith(".json"):
                    with open(os.path.join(root, f), encoding="utf-8") as fh:
                        yield json.load(fh)
    elif path.endswith(".json.xz"):
        with lzma.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        yield from (data.values() if isinstance(data, dict) else data)
    elif path.endswith((".tar.xz", ".txz")):
        with tarfile.open(path, "r:xz") as tf:
            for m in sorted(tf.getmembers(), key=lambda m: m.name):
                if m.isfile() and m.name.endswith(".json"):
                    member = tf.extractfile(m)
                    if member is not None:
                        yield json.load(member)
    else:
        with open(path, encoding="utf-8") as fh:
            yield json.load(fh)


def build_topology(scenario: dict) -> Topology:
    topo = scenario["topology"]
    users = tuple(User(u["id"], u["name"], u.get("email", "")) for u in topo["users"])
    by_name = {u.name: u for u in users}
    captured = scenario.get("nodes") or {}
    nodes = []
    for i, hostname in enumerate(sorted(topo["nodes"]), start=1):
        n = topo["nodes"][hostname]
        tags = tuple(n.get("tags") or ())
        user = by_name.get(n.get("user") or "")
        adv = tuple(ipaddress.ip_network(r) for r in n.get("routable_ips") or ())
        appr = tuple(ipaddress.ip_network(r) for r in n.get("approved_routes") or ())
        self_cap = (captured.get(hostname) or {}).get("self")
        if self_cap is not None:
            primary = tuple(ipaddress.ip_network(r) for r in self_cap.get("PrimaryRoutes") or ())
        else:
            primary = tuple(r for r in adv if r.prefixlen and r in appr)
        nodes.append(Node(
            id=i, hostname=hostname,
            user_id=None if tags or user is None else user.id,
            tags=tags,
            ipv4=ipaddress.IPv4Address(n["ipv4"]) if n.get("ipv4") else None,
            ipv6=ipaddress.IPv6Address(n["ipv6"]) if n.get("ipv6") else None,
            advertised_routes=adv, approved_routes=appr, primary_routes=primary,
        ))
    return Topology(users, tuple(nodes))


def scenario_policy_text(scenario: dict) -> Optional[str]:
    """A scenario's policy as text (the corpus stores it as a string or as parsed JSON)."""
    policy = scenario.get("policy")
    return policy if isinstance(policy, str) or policy is None else json.dumps(policy)


def compiled_scenarios(path: str) -> Iterator[tuple[dict, PolicyEngine, Topology]]:
    """
    ``(scenario, engine, topology)`` for each scenario whose policy parses, with
    the topology after auto-approval (what the server would compile against);
    for tests that compare two ways of computing the same thing on the corpus.
    """
    for scenario in load_scenarios(path):
        try:
            engine = PolicyEngine(scenario_policy_text(scenario))
            topology = with_auto_approvals(engine, build_topology(scenario))
        except PolicyError:
            continue
        yield scenario, engine, topology


def with_auto_approvals(engine: PolicyEngine, topology: Topology) -> Topology:
    """Apply the policy's ``autoApprovers`` to the topology, as the server does."""
    cp = engine.compile(topology)
    nodes = tuple(dataclasses.replace(n, approved_routes=cp.auto_approved_routes(n))
                  for n in topology.nodes)
    return Topology(topology.users, nodes)


# -- canonical forms ----------------------------------------------------------


def _canon_json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def canonical_rules(rules: Optional[list]) -> list:
    out = []
    for r in rules or ():
        c: dict[str, Any] = {"SrcIPs": sorted(r.get("SrcIPs") or ())}
        if r.get("DstPorts"):
            c["DstPorts"] = sorted(
                (d["IP"], d["Ports"]["First"], d["Ports"]["Last"]) for d in r["DstPorts"]
            )
        if r.get("IPProto"):
            c["IPProto"] = sorted(r["IPProto"])
        if r.get("CapGrant"):
            c["CapGrant"] = sorted(
                _canon_json({"Dsts": sorted(g.get("Dsts") or ()), "CapMap": g.get("CapMap") or {}})
                for g in r["CapGrant"]
            )
        out.append(_canon_json(c))
    return sorted(out)


def canonical_ssh(pol: Optional[dict]) -> list:
    out = []
    for r in (pol or {}).get("rules") or ():
        c = dict(r)
        c["principals"] = sorted(_canon_json(p) for p in r.get("principals") or ())
        out.append(_canon_json(c))
    return out


def _peer_view(p: dict) -> dict:
    return {
        "AllowedIPs": sorted(p.get("AllowedIPs") or ()),
        "PrimaryRoutes": sorted(p.get("PrimaryRoutes") or ()),
        "Tags": sorted(p.get("Tags") or ()),
    }


def _policy_caps(cap_map: Optional[dict]) -> dict:
    return {k: v for k, v in (cap_map or {}).items() if k not in SAAS_DEFAULT_CAPS}


# -- running ------------------------------------------------------------------


def _short(v: Any, n: int = 300) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return s if len(s) <= n else s[:n] + "..."


def run_scenario(scenario: dict) -> ScenarioResult:
    sid, cat = scenario["id"], scenario["category"]
    text = scenario_policy_text(scenario)
    want_reject = scenario.get("api_response_code") != 200
    topology = build_topology(scenario)
    try:
        engine = PolicyEngine(text)
        topology = with_auto_approvals(engine, topology)
        engine.check(topology)
    except PolicyError as e:
        if want_reject:
            return ScenarioResult(sid, cat, True)
        return ScenarioResult(sid, cat, False, f"rejected a policy the service accepted: {e}")
    if want_reject:
        msg = (scenario.get("api_response_body") or {}).get("message", "")
        return ScenarioResult(sid, cat, False, f"accepted a policy the service rejected ({msg!r})")
    cp = engine.compile(topology)
    by_host = {n.hostname: n for n in topology.nodes}
    for hostname in sorted(scenario.get("nodes") or {}):
        want = scenario["nodes"][hostname]
        node = by_host.get(hostname)
        if node is None:
            return ScenarioResult(sid, cat, False, f"{hostname}: node not in topology")
        reason = _compare_node(cp, node, want)
        if reason:
            return ScenarioResult(sid, cat, False, f"{hostname}: {reason}")
    return ScenarioResult(sid, cat, True)


def _compare_node(cp: CompiledPolicy, node: Node, want: dict) -> str:
    if "packet_filter_rules" in want:
        got_r = canonical_rules(cp.filter_wire_for(node))
        want_r = canonical_rules(want.get("packet_filter_rules"))
        if got_r != want_r:
            extra = sorted(set(got_r) - set(want_r))
            missing = sorted(set(want_r) - set(got_r))
            return f"filter differs: missing {_short(missing)} extra {_short(extra)}"
    if "peers" in want:
        got_p = {p.node.hostname: _peer_view({
            "AllowedIPs": list(p.allowed_ips), "PrimaryRoutes": list(p.primary_routes),
            "Tags": list(p.node.tags)}) for p in cp.peers_for(node)}
        want_p = {h: _peer_view(p) for h, p in (want.get("peers") or {}).items()}
        if set(got_p) != set(want_p):
            return (f"peers differ: missing {sorted(set(want_p) - set(got_p))} "
                    f"extra {sorted(set(got_p) - set(want_p))}")
        for h in sorted(want_p):
            if got_p[h] != want_p[h]:
                return f"peer {h} differs: want {want_p[h]} got {got_p[h]}"
    s = want.get("self")
    if s is not None:
        if sorted(cp.self_allowed_ips(node)) != sorted(s.get("AllowedIPs") or ()):
            return f"self AllowedIPs differ: want {s.get('AllowedIPs')} got {cp.self_allowed_ips(node)}"
        want_caps = _policy_caps(s.get("CapMap"))
        got_caps = _policy_caps(cp.cap_map_for(node))
        if _canon_json(want_caps) != _canon_json(got_caps):
            return f"CapMap differs: want {_short(want_caps)} got {_short(got_caps)}"
    if "ssh_policy" in want:
        got_s = canonical_ssh(cp.ssh_policy_for(node))
        want_s = canonical_ssh(want.get("ssh_policy"))
        if got_s != want_s:
            return f"ssh policy differs: want {_short(want_s, 600)} got {_short(got_s, 600)}"
    return ""


def run(path: str, category: Optional[str] = None, only: Optional[str] = None) -> list[ScenarioResult]:
    results = []
    for sc in load_scenarios(path):
        if category and sc.get("category") != category:
            continue
        if only and sc.get("id") != only:
            continue
        try:
            results.append(run_scenario(sc))
        except Exception as e:  # a crash is a failure of that scenario, not of the run
            results.append(ScenarioResult(sc.get("id", "?"), sc.get("category", "?"), False,
                                          f"crash: {type(e).__name__}: {e}"))
    return results


def summarise(results: list[ScenarioResult]) -> dict[str, tuple[int, int]]:
    per: dict[str, tuple[int, int]] = {}
    for r in results:
        p, t = per.get(r.category, (0, 0))
        per[r.category] = (p + r.passed, t + 1)
    return per


def vendor(src: str, dst: str) -> None:
    """
    Write the scenarios under ``src`` to ``dst`` as one xz-compressed JSON list,
    dropping only what the runner never reads (whois results, DNS settings,
    peer Addresses/CapMap, self Addresses).
    """
    out = []
    for d in load_scenarios(src):
        d.pop("tailnet", None)
        for n in (d.get("nodes") or {}).values():
            n.pop("whois", None)
            (n.get("self") or {}).pop("Addresses", None)
            for p in (n.get("peers") or {}).values():
                p.pop("Addresses", None)
                p.pop("CapMap", None)
        out.append(d)
    data = json.dumps(out, sort_keys=True, separators=(",", ":")).encode()
    with open(dst, "wb") as fh:
        fh.write(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m headscale_tw.policy.conformance")
    ap.add_argument("path")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each failure and why")
    ap.add_argument("--category")
    ap.add_argument("--id")
    ap.add_argument("--vendor", metavar="OUT.json.xz", help="write PATH's scenarios to a compressed archive and exit")
    args = ap.parse_args(argv)
    if args.vendor:
        vendor(args.path, args.vendor)
        return 0
    results = run(args.path, args.category, args.id)
    if args.verbose:
        for r in results:
            if not r.passed:
                print(f"FAIL {r.id}: {r.reason}")
    for cat, (p, t) in sorted(summarise(results).items()):
        print(f"{cat:12s} {p:4d}/{t:<4d} {100.0 * p / t:6.1f}%")
    passed = sum(r.passed for r in results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
