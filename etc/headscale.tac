# twistd -ny etc/headscale.tac
# Builds the same service tree as `twistd headscale`. The config path comes from
# HEADSCALE_CONFIG, else config.yaml next to this file, else the normal search.
import os
import sys

from twisted.application import service
from twisted.internet import reactor
from twisted.logger import ILogObserver, textFileLogObserver

from headscale_tw.config.loader import load_config
from headscale_tw.service import build_service

_here = os.path.dirname(os.path.abspath(__file__))
_path = os.environ.get("HEADSCALE_CONFIG")
if not _path and os.path.exists(os.path.join(_here, "config.yaml")):
    _path = os.path.join(_here, "config.yaml")

application = service.Application("headscale")
application.setComponent(ILogObserver, textFileLogObserver(sys.stdout))
build_service(load_config(_path), reactor).setServiceParent(application)
