"""Shared output of the benchmark scripts: one `name value` line per figure, and the same
figures as JSON when asked."""

import json


def report(results: dict, json_path: str | None = None) -> None:
    for k, v in results.items():
        print(f"{k:28} {v}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
