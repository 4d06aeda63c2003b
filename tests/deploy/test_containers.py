# -*- test-case-name: tests.deploy.test_containers -*-
"""
The container files and the Prometheus example, checked by parsing them.

Images cannot be pulled or built here, so these tests read the Dockerfile and
the compose file and check what can be checked without Docker: every path
they copy or mount exists in the checkout, the services wait for each other as
documented, and the configurations they mount load with the project's own
config loader and agree with the nginx site and with each other.
"""

import json
import os
import re

import yaml
from twisted.trial import unittest

from headscale_tw.config.loader import parse_config_with_warnings
from headscale_tw.hostport import parse_hostport
from headscale_tw.testing.realclient.nginx import deploy_dir

__all__ = ["DockerfileTests", "ComposeTests", "MountedConfigTests", "PrometheusTests", "dockerfile_instructions"]


def _path(*parts):
    return os.path.join(deploy_dir(), *parts)


def _text(*parts):
    with open(_path(*parts)) as f:
        return f.read()


def dockerfile_instructions(text):
    """``[(INSTRUCTION, arguments)]`` of a Dockerfile: comments dropped, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _compose():
    with open(_path("docker", "compose.yaml")) as f:
        return yaml.safe_load(f)


def _stages(instructions):
    stages = []
    for word, rest in instructions:
        if word == "FROM":
            stages.append([])
        stages[-1].append((word, rest))
    return stages


class DockerfileTests(unittest.TestCase):
    """deploy/docker/Dockerfile builds from the checkout and runs ``headscale serve`` unprivileged."""

    def setUp(self):
        self.instructions = dockerfile_instructions(_text("docker", "Dockerfile"))
        self.top = os.path.dirname(deploy_dir())

    def test_copies_exist(self):
        """Every COPY source of the build stage exists in the build context (the checkout's top level)."""
        sources = []
        for word, rest in self.instructions:
            if word == "COPY" and not rest.startswith("--from"):
                sources.extend(rest.split()[:-1])
        self.assertIn("src", sources)
        for source in sources:
            self.assertTrue(os.path.exists(os.path.join(self.top, source)), source)

    def test_runtime_stage(self):
        """The final stage runs as the headscale user, exec-form ``headscale serve``, with a health check."""
        final = dict(_stages(self.instructions)[-1])
        self.assertIn("bookworm", final["FROM"])
        self.assertEqual(final["USER"], "headscale")
        self.assertEqual(json.loads(final["ENTRYPOINT"]), ["headscale"])
        self.assertEqual(json.loads(final["CMD"]), ["serve"])
        self.assertIn("3478/udp", final["EXPOSE"].split())
        self.assertIn('"headscale", "health"', final["HEALTHCHECK"])


class ComposeTests(unittest.TestCase):
    """deploy/docker/compose.yaml wires the five services as documented."""

    def setUp(self):
        self.compose = _compose()
        self.services = self.compose["services"]

    def test_services(self):
        """headscale-tw, PostgreSQL, nginx, Headplane and certbot are there."""
        self.assertEqual(set(self.services), {"headscale-tw", "postgres", "nginx", "headplane", "certbot"})

    def test_postgres_health_and_wait(self):
        """PostgreSQL is health-checked with pg_isready and the server starts only once it is healthy."""
        check = self.services["postgres"]["healthcheck"]["test"]
        self.assertEqual(check[:2], ["CMD", "pg_isready"])
        self.assertEqual(self.services["headscale-tw"]["depends_on"], {"postgres": {"condition": "service_healthy"}})
        password = self.services["postgres"]["environment"]["POSTGRES_PASSWORD"]
        self.assertEqual(self.services["headscale-tw"]["environment"]["HEADSCALE_DATABASE_POSTGRES_PASS"], password)
        self.assertTrue(password.startswith("${POSTGRES_PASSWORD:?"))

    def test_build_and_mounts_exist(self):
        """The build context and Dockerfile, and every bind-mounted file, exist relative to the compose file."""
        base = _path("docker")
        build = self.services["headscale-tw"]["build"]
        context = os.path.normpath(os.path.join(base, build["context"]))
        self.assertTrue(os.path.isfile(os.path.join(context, build["dockerfile"])))
        named = set(self.compose["volumes"])
        for name, service in self.services.items():
            for volume in service.get("volumes", []):
                source = volume.split(":")[0]
                if source.startswith("."):
                    self.assertTrue(os.path.exists(os.path.join(base, source)), (name, source))
                else:
                    self.assertIn(source, named, name)
        for secret in self.compose["secrets"].values():
            self.assertIn(os.path.relpath(secret["file"]), _text("docker", ".gitignore").split())

    def test_front_shares_network_and_ports(self):
        """nginx (1.22, production site) and Headplane share the server's network; ports are published there."""
        nginx = self.services["nginx"]
        self.assertTrue(nginx["image"].startswith("nginx:1.22"))
        self.assertIn("../nginx/headscale-production.conf:/etc/nginx/conf.d/headscale.conf:ro", nginx["volumes"])
        for name in ("nginx", "headplane"):
            self.assertEqual(self.services[name]["network_mode"], "service:headscale-tw")
        self.assertEqual(self.services["headplane"]["pid"], "service:headscale-tw")
        self.assertEqual(set(self.services["headscale-tw"]["ports"]), {"80:80", "443:443", "3478:3478/udp"})

    def test_certbot_shares_certificates(self):
        """certbot writes the certificates and challenges nginx reads."""
        certbot = {v.split(":")[0]: v.split(":")[1] for v in self.services["certbot"]["volumes"]}
        nginx = {v.split(":")[0]: v.split(":")[1] for v in self.services["nginx"]["volumes"]}
        for volume in ("letsencrypt", "certbot-www"):
            self.assertEqual(certbot[volume], nginx[volume])
        self.assertIn("certbot renew --webroot -w /var/www/certbot", " ".join(self.services["certbot"]["entrypoint"]))
        self.assertIn("root /var/www/certbot;", _text("nginx", "headscale-production.conf"))


class MountedConfigTests(unittest.TestCase):
    """The configurations compose mounts load and agree with the nginx site and each other."""

    def setUp(self):
        self.config, self.warnings = parse_config_with_warnings(
            _text("docker", "headscale", "config.yaml"), environ={"HEADSCALE_DATABASE_POSTGRES_PASS": "secret"},
        )

    def test_server_config(self):
        """The server config loads without warnings and points at the compose PostgreSQL."""
        self.assertEqual(self.warnings, [])
        self.assertEqual(self.config.database.type, "postgres")
        self.assertEqual(self.config.database.postgres.host, "postgres")
        self.assertEqual(self.config.database.postgres.password, "secret")

    def test_agrees_with_nginx_and_compose(self):
        """It listens where the production site's upstream points; STUN and the socket match compose."""
        site = _text("nginx", "headscale-production.conf")
        upstream = re.search(r"upstream headscale_tw \{\s*server ([^;]+);", site).group(1)
        self.assertEqual(self.config.listen_addr, upstream)
        self.assertEqual(int(parse_hostport(self.config.derp.server.stun_listen_addr)[1]), 3478)
        services = _compose()["services"]
        mounts = [v.split(":")[1] for v in services["headscale-tw"]["volumes"]]
        self.assertIn(os.path.dirname(self.config.unix_socket), mounts)

    def test_headplane_config(self):
        """Headplane reaches the server on its listen address, reads its config and uses the proc integration."""
        headplane = yaml.safe_load(_text("docker", "headplane", "config.yaml"))
        self.assertEqual(headplane["headscale"]["url"], "http://" + self.config.listen_addr)
        self.assertTrue(headplane["integration"]["proc"]["enabled"])
        mounts = [v.split(":")[1] for v in _compose()["services"]["headplane"]["volumes"]]
        self.assertIn(headplane["headscale"]["config_path"], mounts)
        secret = headplane["server"]["cookie_secret_path"]
        self.assertEqual(secret, "/run/secrets/" + _compose()["services"]["headplane"]["secrets"][0])


class PrometheusTests(unittest.TestCase):
    """deploy/prometheus/prometheus.yml scrapes the metrics listener."""

    def test_scrape_job(self):
        """One job scrapes /metrics on the example config's metrics listener."""
        with open(_path("prometheus", "prometheus.yml")) as f:
            prom = yaml.safe_load(f)
        (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "headscale-tw"]
        self.assertEqual(job["metrics_path"], "/metrics")
        (targets,) = [c["targets"] for c in job["static_configs"]]
        with open(os.path.join(os.path.dirname(deploy_dir()), "etc", "config-example.yaml")) as f:
            example = yaml.safe_load(f)
        self.assertEqual(targets, [example["metrics_listen_addr"]])
