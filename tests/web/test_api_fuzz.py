# -*- test-case-name: tests.web.test_api_fuzz -*-
"""
Fuzz ``/api/v1`` from its own OpenAPI document with schemathesis.

schemathesis reads :func:`headscale_tw.web.openapi.document`; every operation
then gets three bounded, repeatable phases of requests:

- *coverage*: schemathesis's edge cases drawn from the document without
  randomness (empty and boundary values, wrong types, values that break a
  pattern, missing parameters, other HTTP methods, wrong content types), at
  most ``COVERAGE_LIMIT`` per operation;
- *hostile*: fixed values the issue tracker has seen break the server: every id
  parameter and id field past int64/uint64, in non-ASCII digits, signed or
  spaced; every body nested 100,000 deep, not UTF-8, or not an object;
- *fuzzing*: Hypothesis draws ``EXAMPLES_*`` requests per generation mode,
  positive (valid by the document) and negative (breaking it somewhere).
  Hypothesis is derandomized (a fixed seed), keeps no example database, has no
  deadline and does not shrink, so every run sends the same requests and
  nothing is timed.

Each request goes to the real :class:`~headscale_tw.web.admin_api.AdminAPI`
(API keys checked) over a real control plane and an in-memory SQLite database,
through ``StubTreq``: a real ``twisted.web`` ``Site`` parsing real HTTP bytes
over an in-memory transport, so no socket, thread or wall clock is involved
and each request finishes before the next is drawn. Each answer goes through
schemathesis's checks (documented status code, content type, body matching
the document) and ours: no 5xx, except the 501/503 that an operation
documents; and, without a key, 401 and nothing else.

A finding is recorded, not raised, so that one run lists every distinct
failure (operation, status, check, the exception the server logged) with one
example request each; the test then fails naming them all.
"""

from __future__ import annotations

import itertools
import json

import attrs
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode
from schemathesis.core import NOT_SET
from schemathesis.core.failures import ServerError
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from treq.testing import StubTreq
from twisted.trial import unittest
from twisted.web.resource import Resource

from headscale_tw import secrets
from headscale_tw.clock import utc_now
from headscale_tw.web.admin_api import AdminAPI
from headscale_tw.web.openapi import document
from tests.nodesapi._harness import NOW, PlaneHarness

__all__ = ["AdminApiFuzzTests", "FuzzerTests"]

BASE_URL = "http://headscale.test"
#: Requests drawn per operation and generation mode (positive, negative).
EXAMPLES_WITH_KEY = 6
EXAMPLES_WITHOUT_KEY = 2
#: At most this many of schemathesis's coverage cases per operation (the largest operation has 53).
COVERAGE_LIMIT = 80
#: Ids that are not ids: past int64 and uint64, non-ASCII digits (``str.isdigit`` accepts them), signs, spaces.
HOSTILE_IDS = ("9223372036854775808", "18446744073709551616", "1" + "0" * 40, "\u00b2", "\u0661", "-1", "+1", " 1",
               "1.0", "0x1f", "")
#: The same as JSON numbers, in a body.
HOSTILE_JSON_IDS = (2**63, 2**64, -1, 1.5, 1e300, True)
#: Bodies: nested past any parser's recursion limit, not UTF-8, not an object, not JSON.
HOSTILE_BODIES = (b"[" * 100_000, b'{"a":' * 100_000, b"\xff\xfe{}", b"[]", b"null", b'"x"', b"1e999999",
                  b"{", b'{"name": NaN}')
_MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
#: Headers that the in-process client sets itself from the body it sends.
_CLIENT_HEADERS = {"content-length", "transfer-encoding", "connection", "accept-encoding"}


@attrs.frozen
class Finding:
    """One distinct failure: where, what status, which check, and one request that shows it."""

    operation: str
    status: int
    check: str
    error: str
    example: str

    def key(self) -> tuple:
        """What makes two findings the same failure."""
        return (self.operation, self.status, self.check, self.error)

    def describe(self) -> str:
        """One paragraph for the test's failure message."""
        error = f" [{self.error}]" if self.error else ""
        return f"{self.operation} -> {self.status}: {self.check}{error}\n    e.g. {self.example}"


def _declared_statuses() -> dict[tuple[str, str], set[int]]:
    """The 5xx statuses each operation documents on purpose (501 unimplemented, 503 health)."""
    out = {}
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            out[(method.upper(), path)] = {int(code) for code in op["responses"] if code.isdigit()}
    return out


_DECLARED = _declared_statuses()


def no_server_error(ctx, response, case):
    """No 5xx, except one the operation documents.

    schemathesis's own ``not_a_server_error`` allows none, and for its content-type
    probes it sends a control request through ``requests`` to the network: never here.
    """
    declared = _DECLARED.get((case.method.upper(), case.path), set())  # none for an undocumented method
    if response.status_code >= 500 and response.status_code not in declared:
        raise ServerError(operation=case.operation.label, status_code=response.status_code)


def only_unauthenticated(ctx, response, case):
    """Without a valid API key, every answer is 401 (or twisted.web's own 400 for a body it cannot parse)."""
    if response.status_code == 400 and _from_http_layer(response):
        return
    if response.status_code != 401:
        raise AssertionError(f"expected 401 without an API key, got {response.status_code}")


def _from_http_layer(response) -> bool:
    """An answer of ``twisted.web`` itself, before any resource: not JSON (a ``multipart/form-data``
    body without a boundary is refused that way, as the coverage phase's content-type probes show)."""
    return not any(v.startswith("application/json") for v in response.headers.get("content-type", []))


_CHECKS = [no_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _short(value: object, limit: int = 300) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


class Fuzzer:
    """Draws requests from the document, sends them through ``StubTreq``, records findings.

    :param testcase: the running ``TestCase`` (its ``successResultOf`` and logged errors).
    :param root: the resource tree the requests go to (``/api`` below it).
    :param authorization: called before each request; the ``Authorization``
        value to send, or ``None`` to send whatever schemathesis drew.
    :param after: called after each request (to let timers run).
    """

    def __init__(self, testcase, root, authorization=lambda: None, after=lambda: None):
        self.testcase = testcase
        self.treq = StubTreq(root)
        self.authorization = authorization
        self.after = after
        self.schema = schemathesis.openapi.from_dict(document())
        self.findings: dict[tuple, Finding] = {}
        self.sent = 0
        self.statuses: dict[int, int] = {}

    def operations(self):
        """Every operation of the document."""
        return [result.ok() for result in self.schema.get_all_operations()]

    def run(self, examples: int, checks=tuple(_CHECKS), operations=None) -> list[Finding]:
        """All three phases for each operation; return the distinct findings."""
        for operation in operations if operations is not None else self.operations():
            self.coverage(operation, list(checks))
            self.hostile(operation, list(checks))
            for mode in _MODES:
                self.fuzz(operation, mode, examples, list(checks))
        return list(self.findings.values())

    def coverage(self, operation, checks):
        """schemathesis's coverage phase: fixed edge cases from the document (at most ``COVERAGE_LIMIT``)."""
        cases = self.schema.iter_coverage_cases(operation, generation_modes=list(_MODES),
                                                generation_config=self.schema.config.generation_for(
                                                    operation=operation))
        for case in itertools.islice(cases, COVERAGE_LIMIT):
            self.check(case, checks)

    def hostile(self, operation, checks):
        """Fixed hostile values: every id parameter and id field out of range or not decimal, and
        for every body, JSON nested too deep, bytes that are not UTF-8 and bodies that are not objects."""
        declared = document()["paths"][operation.path][operation.method]
        params = declared.get("parameters", [])
        path = {p["name"]: "1" if p.get("format") == "uint64" else "x" for p in params if p["in"] == "path"}
        body_param = next((p for p in params if p["in"] == "body"), None)
        body = {} if body_param is not None else NOT_SET
        for param in params:
            if param.get("format") != "uint64":
                continue
            for value in HOSTILE_IDS:
                if param["in"] == "path":
                    case = operation.Case(path_parameters={**path, param["name"]: value}, body=body)
                else:
                    case = operation.Case(path_parameters=path, query={param["name"]: value}, body=body)
                self.check(case, checks)
        if body_param is None:
            return
        definition = document()["definitions"][body_param["schema"]["$ref"].rpartition("/")[2]]
        for name, field in definition.get("properties", {}).items():
            if field.get("format") == "uint64":
                for value in (*HOSTILE_IDS, *HOSTILE_JSON_IDS):
                    self.check(operation.Case(path_parameters=path, body={name: value}), checks)
        for raw in HOSTILE_BODIES:
            self.check(operation.Case(path_parameters=path, body={}), checks, raw_body=raw)

    def fuzz(self, operation, mode, examples, checks):
        """Hypothesis draws ``examples`` requests in ``mode``, derandomized, untimed, without shrinking."""

        @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                  phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=mode))
        def one(case):
            self.check(case, checks)

        one()

    def check(self, case, checks, raw_body: bytes | None = None):
        """Send one case (with ``raw_body`` instead of its own if given), run the checks, record what fails."""
        value = self.authorization()
        if value is not None:
            case.headers = {**(case.headers or {}), "Authorization": value}
        prepared = requests.Request(**case.as_transport_kwargs(base_url=BASE_URL)).prepare()
        if raw_body is not None:
            prepared.prepare_body(raw_body, None)
        response = self.send(prepared)
        errors = self.testcase.flushLoggedErrors()
        error = "; ".join(f"{e.type.__name__}: {_short(str(e.value), 120)}" for e in errors)
        self.sent += 1
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        failures = []
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as group:
            failures = [f.title for f in group.exceptions]
        if errors and not failures:
            failures = ["the server logged an error"]
        for title in failures:
            finding = Finding(case.operation.label, response.status_code, title, error,
                              _short(f"{prepared.method} {prepared.url} {_short(prepared.body or b'', 200)}"
                                     f" -> {_short(response.content, 200)}"))
            self.findings.setdefault(finding.key(), finding)

    def send(self, prepared) -> schemathesis.Response:
        """One request through the in-memory ``Site``; the answer as schemathesis reads it."""
        headers = {name.encode("utf-8"): [str(value).encode("utf-8")] for name, value in prepared.headers.items()
                   if name.lower() not in _CLIENT_HEADERS}
        body = prepared.body.encode("utf-8") if isinstance(prepared.body, str) else prepared.body
        answer = self.testcase.successResultOf(self.treq.request(prepared.method, prepared.url, headers=headers,
                                                                 data=body))
        content = self.testcase.successResultOf(self.treq.content(answer))
        self.after()
        return schemathesis.Response(
            status_code=answer.code,
            headers={name.decode("latin-1"): [v.decode("latin-1") for v in values]
                     for name, values in answer.headers.getAllRawHeaders()},
            content=content,
            request=prepared,
            elapsed=0.0,
            verify=True,
            message=answer.phrase.decode("latin-1"),
        )


def _report(findings: list[Finding], fuzzer: Fuzzer) -> str:
    lines = [f"{len(findings)} distinct failure(s) in {fuzzer.sent} requests (statuses {fuzzer.statuses}):"]
    lines += [f.describe() for f in sorted(findings, key=Finding.key)]
    return "\n".join(lines)


class _Target:
    """A real control plane with a user, a node and a pre-auth key; the key-checking API at ``/api``."""

    def __init__(self, testcase):
        self.harness = PlaneHarness(testcase)
        self.harness.register("fuzzed")
        self.api = AdminAPI(self.harness.plane.admin, trust_all=False)
        self.root = Resource()
        self.root.putChild(b"api", self.api.resource())
        self.prefix = ""
        self.token = ""

    def authorization(self) -> str:
        """``Bearer <key>`` of a valid API key (a new one if the fuzz expired or deleted the last)."""
        run = self.harness.run
        row = run(self.harness.db.apikeys.get_by_prefix(self.prefix)) if self.prefix else None
        if row is None or (row.expiration is not None and row.expiration <= utc_now(self.harness.clock)):
            full, self.prefix, secret = secrets.generate_key("api")
            pepper = run(secrets.get_pepper(self.harness.db.server_state))
            run(self.harness.db.apikeys.create(self.prefix, secrets.hash_secret(secret, pepper), None, now=NOW))
            self.token = full
        return f"Bearer {self.token}"


class AdminApiFuzzTests(unittest.TestCase):
    """Every operation of ``/api/v1``, fuzzed from the document, never answers 5xx and matches the document."""

    def test_with_api_key(self):
        """With a valid API key, no request drawn from the document gets a 5xx or an undocumented answer."""
        target = _Target(self)
        fuzzer = Fuzzer(self, target.root, target.authorization, target.harness.let_deltas_out)
        findings = fuzzer.run(EXAMPLES_WITH_KEY)
        self.assertEqual(len(findings), 0, _report(findings, fuzzer))
        # The fuzz reached the handlers: successes and refusals both occurred.
        self.assertIn(200, fuzzer.statuses)
        self.assertIn(400, fuzzer.statuses)

    def test_without_api_key(self):
        """Without a key (none, or whatever schemathesis draws), every operation answers 401, never 5xx."""
        target = _Target(self)
        fuzzer = Fuzzer(self, target.root, after=target.harness.let_deltas_out)
        findings = fuzzer.run(EXAMPLES_WITHOUT_KEY, checks=[*_CHECKS, only_unauthenticated])
        self.assertEqual(len(findings), 0, _report(findings, fuzzer))
        self.assertIn(401, fuzzer.statuses)
        self.assertLessEqual(set(fuzzer.statuses), {400, 401})  # 400: twisted.web's, checked above


class _Broken(Resource):
    """The API, except that one path answers with ``status`` and ``body`` (to show the fuzzer notices)."""

    isLeaf = True

    def __init__(self, inner, path: bytes, status: int, body: dict):
        super().__init__()
        self.inner = inner
        self.path = path
        self.status = status
        self.body = body

    def render(self, request):
        """Delegate to the API unless the request is for the broken path."""
        if request.path != self.path:
            return self.inner.render(request)
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self.body).encode("utf-8")


class FuzzerTests(unittest.TestCase):
    """The fuzzer catches what it is there to catch."""

    def broken(self, status, body):
        """Fuzz ``GET /api/v1/health`` of an API whose health answer is replaced."""
        target = _Target(self)
        root = Resource()
        root.putChild(b"api", _Broken(target.api.resource(), b"/api/v1/health", status, body))
        fuzzer = Fuzzer(self, root, target.authorization, target.harness.let_deltas_out)
        health = [op for op in fuzzer.operations() if op.label == "GET /api/v1/health"]
        return fuzzer.run(3, operations=health)

    def test_server_error(self):
        """A handler that answers 500 is reported as a server error of its operation."""
        findings = self.broken(500, {"code": 13, "message": "broken on purpose", "details": []})
        self.assertEqual({(f.operation, f.status, f.check) for f in findings},
                         {("GET /api/v1/health", 500, "Server error")})

    def test_schema_mismatch(self):
        """A 200 whose body breaks the document is reported."""
        findings = self.broken(200, {"databaseConnectivity": "yes"})
        self.assertEqual({(f.operation, f.status) for f in findings}, {("GET /api/v1/health", 200)})
        self.assertIn("Response violates schema", {f.check for f in findings})
