# twistd -ny etc/headscale.tac
# Builds the same service tree as `twistd headscale`. The config path comes from
# HEADSCALE_CONFIG, else config.yaml next to this file, else the normal search.
# The log goes to stdout behind log.level (and log.format), secrets redacted; a
# failed start makes twistd exit non-zero.
import os

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import ILogObserver

from headscale_tw.config.loader import ConfigError, load_config
from headscale_tw.logs import stdout_observer
from headscale_tw.service import build_service, exit_with_status

_here = os.path.dirname(os.path.abspath(__file__))
_path = os.environ.get("HEADSCALE_CONFIG")
if not _path and os.path.exists(os.path.join(_here, "config.yaml")):
    _path = os.path.join(_here, "config.yaml")

try:
    _config = load_config(_path)
except ConfigError as e:
    raise SystemExit("headscale-tw could not start: configuration error: " + "; ".join(e.problems))
application = service.Application("headscale")
application.setComponent(ILogObserver, stdout_observer(_config.log))
# raise_early_failure: a daemonising twistd (-y without -n) tells its waiting parent
_top = build_service(_config, reactor, raise_early_failure=True)
_top.setServiceParent(application)
exit_with_status(_top)
