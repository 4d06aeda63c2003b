# -*- test-case-name: tests.oidc.test_client -*-
"""
The relying party's conversation with the provider over HTTP: the thin layer.

:class:`RelyingParty` takes a treq-like ``http`` object in its constructor
(anything with treq's ``get``/``post``: ``treq`` itself, a
``treq.client.HTTPClient`` with its own TLS trust, or a ``StubTreq`` in tests)
and the reactor's clock. It does only the HTTP; every decision is made by the
pure modules beside it:

- :meth:`~RelyingParty.discover` fetches the discovery document
  (:mod:`~headscale_tw.oidc.metadata`) and the JWKS;
- :meth:`~RelyingParty.start_login` makes a :class:`~headscale_tw.oidc.login.LoginRecord`
  and the authorization URL;
- :meth:`~RelyingParty.finish_login` checks the callback against the record,
  exchanges the code (``client_secret_basic``; ``client_secret_post`` when that
  is all the provider offers, or when it answers ``invalid_client`` to the Basic
  header, as Go's oauth2 does; with PKCE, the verifier), validates the ID
  token (:mod:`~headscale_tw.oidc.tokens`), completes its claims from userinfo,
  and applies the policy (:mod:`~headscale_tw.oidc.claims`).

Key rotation: a token naming a ``kid`` the JWKS lacks makes the JWKS be fetched
again, at most once per ``jwks_refresh_interval`` seconds (a stream of forged
``kid`` values cannot make us hammer the provider), then the token is checked
once more.

Every request has a timeout on the injected clock, and every body is read with a
size limit; a provider that is away or answers nonsense ends the login with
:data:`~headscale_tw.oidc.refusals.Reason.PROVIDER_UNAVAILABLE` or
``PROVIDER_INVALID``, never an unhandled error.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

import treq
from joserfc.jwk import KeySet
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers

from headscale_tw.clock import utc_now
from headscale_tw.config.model import OIDCConfig
from headscale_tw.oidc.claims import Identity, LoginPolicy, check_policy, identity_from_claims, merge_userinfo
from headscale_tw.oidc.login import LoginRecord, new_login_record
from headscale_tw.oidc.metadata import ProviderMetadata, authorization_url, discovery_url, parse_metadata
from headscale_tw.oidc.refusals import LoginRefused, Reason
from headscale_tw.oidc.tokens import UnknownSigningKey, parse_jwks, validate_id_token

__all__ = ["MAX_BODY", "RelyingParty", "redirect_uri_for", "read_client_secret"]

MAX_BODY = 1024 * 1024
"""The most bytes read from any provider response."""

_MAX_ERROR_TEXT = 200


class _BodyTooLarge(Exception):
    pass


def redirect_uri_for(server_url: str) -> str:
    """``<server_url>/oidc/callback``: the redirect URI every provider has registered for Headscale."""
    return server_url.rstrip("/") + "/oidc/callback"


def read_client_secret(config: OIDCConfig) -> str:
    """``oidc.client_secret``, or the first line of the file at ``oidc.client_secret_path``."""
    if config.client_secret:
        return config.client_secret
    if not config.client_secret_path:
        return ""
    try:
        with open(config.client_secret_path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as e:
        raise ValueError(f"oidc.client_secret_path: cannot read {config.client_secret_path}: {e.strerror}") from None


def _short(text: Any) -> str:
    return str(text)[:_MAX_ERROR_TEXT]


class RelyingParty:
    """Signs people in with one OpenID Provider, as configured by ``oidc.*``.

    :param config: the ``oidc`` section.
    :param redirect_uri: ``<server_url>/oidc/callback`` (see :func:`redirect_uri_for`).
    :param client_secret: the secret read by :func:`read_client_secret`.
    :param http: treq-like: ``get(url, headers=)`` and ``post(url, data=, headers=)``.
    :param clock: the reactor's clock, for timeouts, the JWKS refresh bound and "now".
    """

    log = Logger()

    def __init__(self, config: OIDCConfig, redirect_uri: str, client_secret: str, http: Any,
                 clock: IReactorTime, timeout: float = 10.0, jwks_refresh_interval: float = 60.0) -> None:
        self.config = config
        self.redirect_uri = redirect_uri
        self._client_secret = client_secret
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self._jwks_refresh_interval = jwks_refresh_interval
        self._policy = LoginPolicy.from_config(config)
        self._metadata: ProviderMetadata | None = None
        self._keys: KeySet = KeySet([])
        self._jwks_fetched_at: float | None = None
        self._auth_style: str | None = None
        self.jwks_fetches = 0
        """How many times the JWKS was fetched (a work count for tests)."""

    # -- HTTP, bounded -----------------------------------------------------

    async def _read(self, response: Any, what: str) -> bytes:
        chunks: list[bytes] = []
        size = 0

        def collect(data: bytes) -> None:
            nonlocal size
            size += len(data)
            if size > MAX_BODY:
                raise _BodyTooLarge()
            chunks.append(data)

        try:
            await treq.collect(response, collect).addTimeout(self._timeout, self._clock)
        except _BodyTooLarge:
            raise LoginRefused(Reason.PROVIDER_INVALID, f"{what}: the answer is larger than {MAX_BODY} bytes") from None
        return b"".join(chunks)

    async def _request(self, method: str, url: str, what: str, **kwargs: Any) -> tuple[int, Any]:
        """One request; returns ``(status, parsed JSON body)``."""
        try:
            call = self._http.get if method == "GET" else self._http.post
            response = await call(url, **kwargs).addTimeout(self._timeout, self._clock)
            body = await self._read(response, what)
        except LoginRefused:
            raise
        except defer.TimeoutError:
            raise LoginRefused(Reason.PROVIDER_UNAVAILABLE, f"{what}: no answer within {self._timeout:g} s") from None
        except Exception as e:
            raise LoginRefused(Reason.PROVIDER_UNAVAILABLE, f"{what}: {type(e).__name__}: {_short(e)}") from None
        try:
            parsed = json.loads(body)
        except ValueError:
            raise LoginRefused(Reason.PROVIDER_INVALID,
                               f"{what}: HTTP {response.code}, body is not JSON: {_short(body)!r}") from None
        return response.code, parsed

    async def _get_json(self, url: str, what: str, headers: Headers | None = None) -> Any:
        status, parsed = await self._request("GET", url, what, headers=headers or Headers())
        if status != 200:
            raise LoginRefused(Reason.PROVIDER_INVALID, f"{what}: HTTP status {status}")
        return parsed

    # -- discovery and keys ------------------------------------------------

    @property
    def keys(self) -> KeySet:
        """The provider's public signing keys, as last fetched."""
        return self._keys

    @property
    def metadata(self) -> ProviderMetadata | None:
        """The provider's metadata once :meth:`discover` succeeded."""
        return self._metadata

    async def discover(self) -> ProviderMetadata:
        """Fetch the discovery document and the JWKS (again, when called again)."""
        doc = await self._get_json(discovery_url(self.config.issuer), "discovery")
        metadata = parse_metadata(doc, self.config.issuer)
        if (self.config.pkce_enabled and metadata.code_challenge_methods
                and self.config.pkce_method not in metadata.code_challenge_methods):
            self.log.warn("the provider advertises PKCE methods {methods}, not oidc.pkce.method {method}",
                          methods=list(metadata.code_challenge_methods), method=self.config.pkce_method)
        self._metadata = metadata
        await self._fetch_jwks()
        return metadata

    async def _fetch_jwks(self) -> None:
        assert self._metadata is not None
        self._jwks_fetched_at = self._clock.seconds()
        self.jwks_fetches += 1
        self._keys = parse_jwks(await self._get_json(self._metadata.jwks_uri, "JWKS"))

    async def _ensure_discovered(self) -> ProviderMetadata:
        return self._metadata if self._metadata is not None else await self.discover()

    # -- one login -----------------------------------------------------------

    async def start_login(self, auth_id: str) -> tuple[LoginRecord, str]:
        """A new :class:`LoginRecord` for ``auth_id`` and the URL to send the person to."""
        metadata = await self._ensure_discovered()
        record = new_login_record(auth_id, utc_now(self._clock), self.config.pkce_enabled, self.config.pkce_method)
        url = authorization_url(metadata, self.config.client_id, self.redirect_uri, self.config.scope,
                                self.config.extra_params, record)
        return record, url

    async def finish_login(self, record: LoginRecord, params: Mapping[str, str]) -> Identity:
        """Check the callback ``params`` against ``record``, exchange the code, validate; the person.

        :meth:`redeem` then :meth:`identify`. Raises :class:`LoginRefused` for
        every way this can fail, including the policy's refusals.
        """
        return await self.identify(await self.redeem(record, params), record)

    async def redeem(self, record: LoginRecord, params: Mapping[str, str]) -> dict[str, Any]:
        """Check the callback ``params`` against ``record`` and exchange its code; the token response."""
        metadata = await self._ensure_discovered()
        state = params.get("state")
        if not state:
            raise LoginRefused(Reason.MISSING_PARAMETER, "the callback has no 'state'")
        record.check_callback(state, utc_now(self._clock))
        if params.get("error"):
            raise LoginRefused(Reason.PROVIDER_DENIED,
                               f"{_short(params['error'])}: {_short(params.get('error_description', ''))}")
        if "iss" in params and params["iss"] != metadata.issuer:  # RFC 9207 mix-up defence
            raise LoginRefused(Reason.WRONG_ISSUER, f"the callback's 'iss' is {_short(params['iss'])!r}")
        code = params.get("code")
        if not code:
            raise LoginRefused(Reason.MISSING_PARAMETER, "the callback has no 'code'")
        return await self._exchange_code(metadata, code, record)

    async def identify(self, tokens: Mapping[str, Any], record: LoginRecord) -> Identity:
        """Validate the token response's ID token for ``record``, add userinfo, apply the policy."""
        metadata = await self._ensure_discovered()
        claims = await self._validated_claims(metadata, tokens.get("id_token"), record.nonce)
        access_token = tokens.get("access_token")
        if metadata.userinfo_endpoint and isinstance(access_token, str) and access_token:
            userinfo = await self._get_json(
                metadata.userinfo_endpoint, "userinfo",
                Headers({"Authorization": [f"Bearer {access_token}"], "Accept": ["application/json"]}))
            if not isinstance(userinfo, dict):
                raise LoginRefused(Reason.PROVIDER_INVALID, "userinfo is not a JSON object")
            claims = merge_userinfo(claims, userinfo)
        identity = identity_from_claims(claims)
        check_policy(identity, self._policy)
        return identity

    async def _exchange_code(self, metadata: ProviderMetadata, code: str, record: LoginRecord) -> dict[str, Any]:
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri}
        if record.code_verifier is not None:
            form["code_verifier"] = record.code_verifier
        styles = [self._auth_style or metadata.token_auth_method]
        if self._auth_style is None and styles[0] == "client_secret_basic" \
                and "client_secret_post" in metadata.token_auth_methods:
            # As Go's oauth2 (Headscale's client) does: when the provider turns the
            # Basic header down as invalid_client, try the secret in the body once.
            styles.append("client_secret_post")
        for style in styles:
            status, body = await self._post_token(metadata, form, style)
            error = body.get("error", "") if isinstance(body, dict) else ""
            if status == 200 and isinstance(body, dict):
                self._auth_style = style
                return body
            if error != "invalid_client":
                break
        description = body.get("error_description", "") if isinstance(body, dict) else ""
        raise LoginRefused(Reason.CODE_REJECTED,
                           f"token endpoint: HTTP {status} {_short(error)} {_short(description)}".rstrip())

    async def _post_token(self, metadata: ProviderMetadata, form: Mapping[str, str], style: str) -> tuple[int, Any]:
        form = dict(form)
        headers = Headers({"Content-Type": ["application/x-www-form-urlencoded"], "Accept": ["application/json"]})
        if style == "client_secret_post":
            form.update(client_id=self.config.client_id, client_secret=self._client_secret)
        else:
            # RFC 6749 2.3.1: both halves are form-urlencoded before base64.
            pair = f"{quote(self.config.client_id, safe='')}:{quote(self._client_secret, safe='')}"
            headers.setRawHeaders("Authorization", [f"Basic {base64.b64encode(pair.encode()).decode()}"])
        return await self._request("POST", metadata.token_endpoint, "token",
                                   data=urlencode(form).encode("ascii"), headers=headers)

    async def _validated_claims(self, metadata: ProviderMetadata, id_token: Any, nonce: str) -> dict[str, Any]:
        def validate() -> dict[str, Any]:
            return validate_id_token(id_token, self._keys, issuer=metadata.issuer, client_id=self.config.client_id,
                                     nonce=nonce, now=self._clock.seconds(), algorithms=metadata.signing_algorithms)

        try:
            return validate()
        except UnknownSigningKey:
            last = self._jwks_fetched_at
            if last is not None and self._clock.seconds() - last < self._jwks_refresh_interval:
                raise
            self.log.info("ID token names an unknown key; fetching the provider's JWKS again")
            await self._fetch_jwks()
            return validate()
