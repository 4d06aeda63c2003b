# -*- test-case-name: tests.control.test_plane,tests.control.test_control_api,tests.control.test_ssh_check -*-
"""
The control plane's HTTP resources, built from its domain objects.

The domain (:class:`~headscale_tw.control.plane.ControlPlane`) never imports the
web layer; ``service.py`` calls these to mount what the plane serves::

    noise_root.putChild(b"machine", machine_resource(plane, identify))
    http_root.putChild(b"register", register_page(plane.registrar))
    http_root.putChild(b"auth", ssh_check_page(plane.ssh_checks))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from headscale_tw.turns import TurnBudget
from headscale_tw.web.control_api import MachineResource, peer_identity
from headscale_tw.web.register_page import SSH_CHECK_PAGE, RegisterPage

if TYPE_CHECKING:
    from headscale_tw.control.plane import ControlPlane
    from headscale_tw.control.registration import Registrar
    from headscale_tw.control.ssh_check import SSHChecks

__all__ = ["machine_resource", "register_page", "ssh_check_page"]


def machine_resource(plane: ControlPlane, identify: Callable | None = None) -> MachineResource:
    """
    The ``/machine`` resource for the Noise site's root, over the plane's registrar, poll and notifier.

    New map streams are admitted a few per reactor turn (:class:`~headscale_tw.turns.TurnBudget`).
    """
    return MachineResource(plane.registrar, plane.poll, plane.notifier, identify or peer_identity,
                           dns_challenges=plane.dns_challenges, ssh_checks=plane.ssh_checks,
                           stream_admission=TurnBudget(plane.registrar.clock))


def register_page(registrar: Registrar) -> RegisterPage:
    """The ``/register`` resource for the plain HTTP root: 404 unless the registration is pending."""

    async def exists(auth_id: str) -> bool:
        return await registrar.get_pending(auth_id) is not None

    return RegisterPage(exists=exists)


def ssh_check_page(ssh_checks: SSHChecks) -> RegisterPage:
    """The ``/auth`` resource for the plain HTTP root: how to approve a pending SSH check."""

    async def exists(auth_id: str) -> bool:
        return await ssh_checks.pending(auth_id) is not None

    return RegisterPage(exists=exists, template=SSH_CHECK_PAGE)
