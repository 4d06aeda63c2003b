# -*- test-case-name: tests.control.test_policy_in_force -*-
"""
The policy in force compiled over the current users and nodes, kept until stale.

:class:`PolicyCompilation` holds the engine in force and an
:class:`~headscale_tw.policy.incremental.IncrementalCompiler` over the
:class:`~headscale_tw.control.policy_inputs.PolicyInputs`: a recompilation
resolves again only the aliases and grants that can select a node changed
since the last one. Checking a new policy (:meth:`PolicyCompilation.check`)
compiles it once; applying that engine next starts from that compilation.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Optional

from headscale_tw.control.policy_inputs import PolicyInputs, policy_users
from headscale_tw.control.policy_source import PolicyRejected
from headscale_tw.counters import Histogram
from headscale_tw.policy.compile import CompiledPolicy, PolicyEngine
from headscale_tw.policy.incremental import IncrementalCompiler
from headscale_tw.policy.model import PolicyError

__all__ = ["PolicyCompilation"]


class PolicyCompilation:
    """
    The engine in force and its compilation, recompiled only when stale.

    ``now()`` times each compilation into :attr:`compile_seconds`;
    :attr:`recompiles` counts them (a work counter for tests).
    """

    def __init__(self, engine: PolicyEngine, now: Callable[[], datetime]) -> None:
        self.engine = engine
        self.now = now
        #: Seconds per policy compilation (checks of a new policy and recompiles for changed nodes).
        self.compile_seconds = Histogram()
        self.recompiles = 0
        #: Compilations made, checks included (a work counter for tests: one per policy change).
        self.compilations = 0
        #: The users (a ``users_key``) the compilation was made with.
        self.users: tuple = ()
        self._compiled: Optional[CompiledPolicy] = None
        self._compiler: Optional[IncrementalCompiler] = None
        self._prepared: Optional[IncrementalCompiler] = None
        self._prepared_compiled: Optional[CompiledPolicy] = None

    def adopt(self, engine: PolicyEngine) -> None:
        """Put ``engine`` in force; the next :meth:`compiled` compiles it."""
        self.engine = engine
        self._compiled = None
        if self._prepared is not None and self._prepared.engine is not engine:
            self._prepared = self._prepared_compiled = None

    def check(self, engine: PolicyEngine, inputs: PolicyInputs, users: tuple | None = None) -> None:
        """Compile ``engine`` over the state's nodes and run its ``tests``; keep that compilation.

        With ``users`` (a ``users_key``) the compilation is made over the nodes
        ``inputs`` holds (the caller synced them), the same node objects the
        views are built from, and applying ``engine`` next uses it as it is when
        nothing changed in between (one compilation per policy change); without,
        over a fresh :meth:`~PolicyInputs.topology` of the state, changing nothing.

        :raises PolicyRejected: naming the problem (a failed test, a bad reference).
        """
        if users is None:
            topology = inputs.topology()
            users_t, nodes = topology.users, topology.nodes
        else:
            users_t, nodes = policy_users(users), tuple(inputs.nodes.values())
        try:
            compiler = IncrementalCompiler(engine, users_t, nodes)
            cp = self._compile(compiler)
            engine.check_compiled(cp)
        except PolicyRejected:
            raise
        except PolicyError as e:
            raise PolicyRejected(str(e)) from None
        # applying this engine next starts from this compilation instead of compiling again
        self._prepared = compiler
        self._prepared_compiled = cp

    def compiled(self, inputs: PolicyInputs, users: tuple) -> CompiledPolicy:
        """The engine compiled over ``inputs`` and ``users`` (a ``users_key``); takes ``inputs.stale``."""
        if users != self.users:
            self.users = users
            self._compiled = None
        if self._compiled is not None and not inputs.stale:
            return self._compiled
        users_t = policy_users(users)
        compiler, prepared, nodes = self._compiler, self._prepared, inputs.nodes
        if compiler is None or compiler.engine is not self.engine:
            if prepared is not None and prepared.engine is self.engine:
                # the compilation the policy was checked with: bring it up to date
                self._prepared = None
                compiler = self._compiler = prepared
                compiler.set_users(users_t)
                for node_id in [k for k in compiler.index.nodes if k not in nodes]:
                    compiler.remove(node_id)
                for pnode in nodes.values():
                    compiler.put(pnode)
                checked, self._prepared_compiled = self._prepared_compiled, None
                if checked is not None and not compiler.changed:
                    # nothing changed since the check: the checked compilation is the one in force
                    inputs.stale.clear()
                    self._compiled = checked
                    return checked
            else:
                compiler = self._compiler = IncrementalCompiler(self.engine, users_t, nodes.values())
        else:
            # Only the aliases and grants that can select a changed node are resolved again.
            compiler.set_users(users_t)
            for node_id in inputs.stale:
                stale = nodes.get(node_id)
                if stale is None:
                    compiler.remove(node_id)
                else:
                    compiler.put(stale)
        inputs.stale.clear()
        self._compiled = self._compile(compiler)
        self.recompiles += 1
        return self._compiled

    def _compile(self, compiler: IncrementalCompiler) -> CompiledPolicy:
        self.compilations += 1
        start = self.now()
        try:
            return compiler.compile()
        finally:
            self.compile_seconds.observe(max(0.0, (self.now() - start).total_seconds()))
