# -*- test-case-name: tests.web.test_admin_api,tests.nodesapi.test_api -*-
"""
The admin REST API, ``/api/v1``: the public names of :mod:`headscale_tw.web.admin`.

The application is :class:`~headscale_tw.web.admin.app.AdminAPI`; error
mapping, input validation, JSON shapes and the handlers of each area live in
the modules of :mod:`headscale_tw.web.admin`.
"""

from headscale_tw.web.admin.app import AdminAPI, mount
from headscale_tw.web.admin.early import GuardedRequest
from headscale_tw.web.admin.errors import ApiError
from headscale_tw.web.admin.shapes import apikey_json, node_json, preauthkey_json, user_json
from headscale_tw.web.admin.validate import tag as validate_tag
from headscale_tw.web.admin.validate import user_name as validate_user_name

__all__ = ["AdminAPI", "ApiError", "GuardedRequest", "mount", "validate_user_name", "validate_tag", "node_json",
           "user_json", "preauthkey_json", "apikey_json"]
