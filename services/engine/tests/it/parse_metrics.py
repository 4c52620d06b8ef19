"""Reads Prometheus text format on stdin with prometheus_client's parser
(the Prometheus project's own Python client) and prints every sample as a
JSON line: {"family", "type", "name", "labels", "value"}. A malformed
exposition fails here, not in our code."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

for family in text_string_to_metric_families(sys.stdin.read()):
    for sample in family.samples:
        print(json.dumps({
            "family": family.name,
            "type": family.type,
            "name": sample.name,
            "labels": sample.labels,
            "value": sample.value,
        }))
