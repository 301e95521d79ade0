#!/usr/bin/env python3
"""Checks a Grafana dashboard against Grafana's own schema, as grafana-foundation-sdk (PyPI) has
it: the JSON is read into the SDK's typed models and written back, and every key and value must
survive. A misspelled or misplaced key is dropped by the models and reported here."""
import json
import sys

from grafana_foundation_sdk.cog import plugins
from grafana_foundation_sdk.models.dashboard import Dashboard


def lost(original, back, path="$"):
    """Where `back` (the models' output) lacks or changes what `original` has."""
    if isinstance(original, dict):
        if not isinstance(back, dict):
            return [f"{path}: not an object after the round trip"]
        out = []
        for k, v in original.items():
            if k not in back:
                out.append(f"{path}.{k}: not in the schema")
            else:
                out.extend(lost(v, back[k], f"{path}.{k}"))
        return out
    if isinstance(original, list):
        if not isinstance(back, list) or len(back) != len(original):
            return [f"{path}: list changed"]
        return [p for i, (a, b) in enumerate(zip(original, back)) for p in lost(a, b, f"{path}[{i}]")]
    return [] if original == back else [f"{path}: {original!r} became {back!r}"]


def main(path):
    plugins.register_default_plugins()
    data = json.load(open(path))
    back = json.loads(json.dumps(Dashboard.from_json(data).to_json(), default=lambda o: o.to_json()))
    problems = lost(data, back)
    for p in problems:
        print(f"{path}: {p}")
    if not problems:
        print(f"{path}: valid ({len(data['panels'])} panels)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
