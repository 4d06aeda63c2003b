"""
The admin REST API, ``/api/v1``, split by responsibility.

:mod:`.errors` (gRPC codes, grpc-gateway's error JSON, domain error mapping),
:mod:`.validate` (request parsing and the documented input limits),
:mod:`.shapes` (Headscale's JSON shapes), one handler module per area
(:mod:`.users`, :mod:`.keys`, :mod:`.nodes`, :mod:`.policy`), :mod:`.app`
(the :class:`~.app.AdminAPI` Klein application and its authentication) and
:mod:`.early` (refusals made before a request body is read).
"""
