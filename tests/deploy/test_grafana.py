"""The Grafana dashboard under deploy/grafana/ only asks for series the server exports."""

import json
import os
import re

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial import unittest

from headscale_tw.metrics import EXPORTED, make_registry

DASHBOARD = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "grafana", "headscale-tw.json")

#: PromQL functions and keywords the dashboard uses; every other name must be a series.
_PROMQL = frozenset({"sum", "max", "rate", "increase", "histogram_quantile", "by"})

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\bby\s*\([^)]*\)")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _panels(items):
    for item in items:
        yield item
        yield from _panels(item.get("panels", ()))


def _names(expr: str) -> list[str]:
    """The identifiers of ``expr`` once strings, label matchers, ranges and ``by (...)`` lists are taken out."""
    bare = _GROUPING.sub(" by ", _RANGE.sub(" ", _MATCHERS.sub(" ", _STRING.sub(" ", expr))))
    return [name for name in _NAME.findall(bare) if not re.fullmatch(r"\d+(\.\d+)?", name)]


class DashboardTests(unittest.TestCase):
    """Every panel expression names exported series only, and its legend uses labels it keeps."""

    def setUp(self):
        with open(DASHBOARD, encoding="utf-8") as f:
            self.dashboard = json.load(f)
        process = generate_latest(make_registry()).decode()
        self.exported = set(EXPORTED) | {s.name for fam in text_string_to_metric_families(process)
                                         for s in fam.samples}
        self.targets = [(panel["title"], target) for panel in _panels(self.dashboard["panels"])
                        for target in panel.get("targets", ())]

    def test_expressions_name_exported_series(self):
        """Each expression asks for at least one series, and each series it names is one /metrics shows."""
        self.assertGreater(len(self.targets), 30)
        for title, target in self.targets:
            names = _names(target["expr"])
            series = [n for n in names if n not in _PROMQL]
            self.assertTrue(series, f"{title}: {target['expr']}")
            self.assertEqual([n for n in series if n not in self.exported], [], f"{title}: {target['expr']}")

    def test_legend_labels_are_kept(self):
        """A legend's ``{{label}}`` is one the expression groups by (else Grafana shows it empty)."""
        for title, target in self.targets:
            grouped = set()
            for clause in re.findall(r"\bby\s*\(([^)]*)\)", target["expr"]):
                grouped |= {label.strip() for label in clause.split(",")}
            used = set(_LEGEND_LABEL.findall(target.get("legendFormat", "")))
            self.assertEqual(used - grouped, set(), f"{title}: {target['expr']}")

    def test_headscale_series_shown(self):
        """Headscale's mapresponse and nodestore series each have a panel."""
        exprs = " ".join(target["expr"] for _, target in self.targets)
        wanted = [name for name in EXPORTED if name.startswith(("headscale_mapresponse_", "headscale_nodestore_"))
                  and not name.endswith(("_sum", "_count"))]
        missing = [name for name in wanted
                   if name not in exprs and name.removesuffix("_bucket") + "_sum" not in exprs]
        self.assertEqual(missing, [])

    def test_layout(self):
        """Panel ids are unique and every panel fits the 24-column grid; the data source is a variable."""
        panels = list(_panels(self.dashboard["panels"]))
        ids = [panel["id"] for panel in panels]
        self.assertEqual(len(ids), len(set(ids)))
        for panel in panels:
            grid = panel["gridPos"]
            self.assertLessEqual(grid["x"] + grid["w"], 24, panel["title"])
        variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        self.assertEqual(variables["datasource"]["type"], "datasource")
