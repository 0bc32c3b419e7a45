"""`newsrec report`: the end of the quickstart, the evaluation table and what the registry now serves."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def registry_lines(model_name: str, mlflow_params: dict) -> list[str]:
    """One line per alias of the registered model, with the version's test NDCG when it was tagged."""
    from mlflow import MlflowClient

    from pipelines.registry import aliases, metric_tag
    from pipelines.tracking import use_tracking

    use_tracking(mlflow_params)
    client = MlflowClient()
    current = aliases(client, model_name)
    if not current:
        return [f"{model_name}: not registered in {mlflow_params['tracking_uri']} (run `newsrec register`)"]
    lines = [f"{model_name} in {mlflow_params['tracking_uri']}:"]
    for alias, version in sorted(current.items()):
        tags = client.get_model_version(model_name, version).tags
        ndcg = tags.get(metric_tag("all", "ndcg@10"))
        extra = f"  test ndcg@10 {float(ndcg):.4f}" if ndcg is not None else ""
        lines.append(f"  @{alias:<10} -> version {version}{extra}  (models:/{model_name}@{alias})")
    return lines


def main(argv: list[str] | None = None) -> int:
    from pipelines.config import parse_step, step_parser

    parser = step_parser("report", __doc__)
    parser.add_argument("--eval-table", type=Path, required=True, help="eval_table.md of `newsrec evaluate`")
    parser.add_argument("--registered", type=Path, required=True, help="summary written by `newsrec register`")
    args, config = parse_step(parser, argv)
    missing = [p for p in (args.eval_table, args.registered) if not p.exists()]
    if missing:
        print(f"newsrec report: not found: {', '.join(map(str, missing))} (run `dvc repro` first)", file=sys.stderr)
        return 1
    registered = json.loads(args.registered.read_text())
    print(args.eval_table.read_text().rstrip() + "\n")
    print(f"registered: {registered['model_name']} version {registered['version']} "
          f"(test window {registered['test_window']})")
    if "promotion" in registered:
        verdict = "promoted" if registered["promotion"]["promoted"] else "not promoted"
        print(f"promotion gate: {verdict}: {registered['promotion']['reason']}")
    print("\n".join(registry_lines(registered["model_name"], config["mlflow"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
