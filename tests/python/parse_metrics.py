"""Parses an OpenMetrics text on stdin with the Prometheus client library's parser and prints
its families as JSON: {name: {"type": ..., "samples": [[sample name, labels, value], ...]}}.
Any text the parser does not accept fails the run (exit 1)."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    families[family.name] = {
        "type": family.type,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
json.dump(families, sys.stdout)
