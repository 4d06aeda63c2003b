# -*- test-case-name: tests.oidc.test_provider_e2e -*-
"""
A person's browser, reduced to what a sign-in needs: cookies, redirects and forms.

Two forms of it:

- :class:`FormBrowser` (treq, asynchronous) stops at the redirect to a relying
  party's ``redirect_uri``: for tests of the relying party alone.
- :func:`browse` (``urllib``, synchronous) goes all the way: from
  ``/register/<auth_id>`` through the provider's pages and back to our
  confirmation page, submitting every form, until a page without one (or, with
  ``stop_at``, until a redirect to a URL starting with it, not followed). Run as
  ``python -m headscale_tw.testing.oidc_browser`` it does this inside a test's
  private network namespace and prints the outcome as JSON.

:class:`FormBrowser` follows an authorization URL through a real provider with
a treq ``HTTPClient`` that keeps cookies: it follows redirects itself, fills
every HTML form it is shown (hidden fields as they are, ``login`` and
``password`` with the account's), submits it, and stops at the first redirect
to the relying party's ``redirect_uri``, whose URL (with ``code`` and
``state``) it returns. The number of steps is bounded, and every step has a
timeout on the given clock.
"""

from __future__ import annotations

import argparse
import http.cookiejar
import json
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode, urljoin

import treq
from twisted.internet.interfaces import IReactorTime

__all__ = ["BrowseResult", "BrowserError", "FormBrowser", "HtmlForm", "browse", "parse_forms"]

_MAX_PAGE = 256 * 1024


class BrowserError(AssertionError):
    """The sign-in did not reach the redirect URI; the message says where it stopped."""


@dataclass
class HtmlForm:
    """One ``<form>``: where it goes, how, and its named inputs with their values."""

    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[HtmlForm] = []
        self._current: HtmlForm | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = HtmlForm(a.get("action", ""), a.get("method", "get").lower())
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and a.get("name"):
            self._current.fields[a["name"]] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None


def parse_forms(html: str) -> list[HtmlForm]:
    """Every form of an HTML page, in document order."""
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    return parser.forms


class FormBrowser:
    """Drives a sign-in through a provider's login and consent pages.

    :param http: a treq ``HTTPClient`` with a cookie jar (the provider ties the
        interaction to a cookie).
    :param clock: for each request's timeout.
    """

    def __init__(self, http: Any, clock: IReactorTime, timeout: float = 15.0, max_steps: int = 20) -> None:
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self._max_steps = max_steps
        self.visited: list[str] = []
        """Every URL requested, in order."""

    async def _page(self, response: Any) -> str:
        body = await treq.content(response).addTimeout(self._timeout, self._clock)
        return body[:_MAX_PAGE].decode("utf-8", "replace")

    async def sign_in(self, url: str, redirect_uri: str, login: str, password: str = "not-checked") -> str:
        """Follow ``url`` until the provider redirects to ``redirect_uri``; return that URL."""
        method, data = "GET", None
        for _ in range(self._max_steps):
            self.visited.append(url)
            if method == "GET":
                d = self._http.get(url, allow_redirects=False)
            else:
                d = self._http.post(url, data=data, allow_redirects=False,
                                    headers={"Content-Type": ["application/x-www-form-urlencoded"]})
            response = await d.addTimeout(self._timeout, self._clock)
            if response.code in (301, 302, 303, 307, 308):
                location = response.headers.getRawHeaders("location", [None])[0]
                await treq.content(response).addTimeout(self._timeout, self._clock)
                if not location:
                    raise BrowserError(f"{url}: redirect without a Location")
                url = urljoin(url, location)
                if url.startswith(redirect_uri):
                    return url
                method, data = "GET", None
                continue
            page = await self._page(response)
            if response.code != 200:
                raise BrowserError(f"{url}: HTTP {response.code}: {page[:500]}")
            forms = parse_forms(page)
            if not forms:
                raise BrowserError(f"{url}: a page with no form to submit: {page[:500]}")
            form = forms[0]
            fields = _fill(form, login, password)
            url = urljoin(url, form.action or url)
            if form.method == "post":
                method, data = "POST", urlencode(fields).encode("ascii")
            else:
                method, data = "GET", None
                url = url + ("&" if "?" in url else "?") + urlencode(fields)
        raise BrowserError(f"no redirect to {redirect_uri} within {self._max_steps} steps: {self.visited}")


@dataclass
class BrowseResult:
    """Where :func:`browse` ended: the last page's URL, status and text, and every URL requested."""

    url: str
    status: int
    body: str
    visited: list[str]


def _fill(form: HtmlForm, login: str, password: str) -> dict[str, str]:
    fields = dict(form.fields)
    if "login" in fields:
        fields["login"] = login
    if "password" in fields:
        fields["password"] = password
    return fields


class _Stopped(Exception):
    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


class _StoppingRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, except one to a URL starting with ``stop_at``: that one ends the browsing."""

    def __init__(self, stop_at: str | None) -> None:
        self._stop_at = stop_at

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if self._stop_at and newurl.startswith(self._stop_at):
            raise _Stopped(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def browse(url: str, login: str, cafiles: Sequence[str], password: str = "not-checked", max_forms: int = 10,
           timeout: float = 15.0, stop_at: str | None = None) -> BrowseResult:
    """Open ``url`` with cookies, follow redirects, submit each page's first form; stop at a page without one.

    Trusts only ``cafiles``; no proxies. At most ``max_forms`` forms are submitted.
    With ``stop_at``, a redirect to a URL starting with it is not followed: the
    result is that URL with status 302 and no body.
    """
    context = ssl.create_default_context(cafile=cafiles[0]) if cafiles else ssl.create_default_context()
    for cafile in cafiles[1:]:
        context.load_verify_locations(cafile=cafile)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context),
                                         urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                         _StoppingRedirects(stop_at))
    visited: list[str] = []
    data: bytes | None = None
    for _ in range(max_forms + 1):
        visited.append(url)
        try:
            with opener.open(urllib.request.Request(url, data=data), timeout=timeout) as response:
                status, final, page = response.status, response.geturl(), response.read(_MAX_PAGE)
        except urllib.error.HTTPError as e:
            return BrowseResult(e.geturl(), e.code, e.read(_MAX_PAGE).decode("utf-8", "replace"), visited)
        except _Stopped as stopped:
            return BrowseResult(stopped.url, 302, "", [*visited, stopped.url])
        text = page.decode("utf-8", "replace")
        forms = parse_forms(text)
        if not forms:
            return BrowseResult(final, status, text, visited)
        form = forms[0]
        fields = _fill(form, login, password)
        url = urljoin(final, form.action or final)
        if form.method == "post":
            data = urlencode(fields).encode("ascii")
        else:
            data = None
            url = url + ("&" if "?" in url else "?") + urlencode(fields)
    raise BrowserError(f"still finding forms after {max_forms} submissions: {visited}")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m headscale_tw.testing.oidc_browser --login NAME --cafile CA [...] URL``: JSON on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("url")
    parser.add_argument("--login", required=True)
    parser.add_argument("--cafile", action="append", default=[])
    parser.add_argument("--stop-at", default=None, help="do not follow a redirect to a URL starting with this")
    args = parser.parse_args(argv)
    try:
        result = asdict(browse(args.url, args.login, args.cafile, stop_at=args.stop_at))
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
