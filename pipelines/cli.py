"""`newsrec`: one CLI, a subcommand per step.

Each subcommand lives in its own module as `main(argv)`; the module is imported only when its
subcommand runs, so `newsrec --help` never pays for great_expectations, mlflow or evidently. A step raises
pipelines.errors.NewsrecError for what the user can fix; this dispatcher prints it in one line and exits 1.
"""

from __future__ import annotations

import importlib
import sys

from pipelines.errors import NewsrecError

# name -> (module, one-line help). Order is the order of the flow.
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("pipelines.synth", "write a synthetic Globo-format dataset"),
    "stats": ("pipelines.stats", "print dataset statistics as JSON"),
    "import": ("pipelines.importers", "convert a public dataset (MovieLens, MIND, a click CSV) to Globo format"),
    "storage": ("pipelines.storage", "list, land and stage hourly drops on local disk or s3://"),
    "validate": ("pipelines.validate", "validate hourly drops with Great Expectations"),
    "split": ("pipelines.split", "cut validated hours into train/val/test snapshots"),
    "aggregates": ("pipelines.aggregates", "hourly popularity and co-click aggregates"),
    "refresh": ("pipelines.serving_index", "rebuild and publish the hourly serving index after an hour landed"),
    "learned": ("pipelines.learned", "fit the two-tower retrieval model at the daily cutoffs of the split"),
    "candidates": ("pipelines.candidates", "fit candidate indexes and write labelled candidate lists"),
    "features": ("pipelines.features", "fit point-in-time feature tables for every snapshot"),
    "train": ("pipelines.train", "train the LightGBM LambdaRank reranker"),
    "evaluate": ("pipelines.evaluate", "rank the test window with every baseline and the reranker"),
    "register": ("pipelines.registry", "register the ranker + serving bundle in MLflow (alias challenger)"),
    "promote": ("pipelines.registry:promote_main", "move alias champion to the challenger if it passes the gate"),
    "rollback": ("pipelines.registry:rollback_main", "point alias champion back at the previous champion"),
    "report": ("pipelines.report", "print the evaluation table and the registered model's aliases"),
    "drift": ("pipelines.drift", "Evidently drift report: reference window vs latest hours"),
    "alert": ("pipelines.alerts", "email an alert with a report attached"),
    "forget-user": ("pipelines.forget_user", "erase one user everywhere and record it (GDPR)"),
    "serve": ("pipelines.serve", "serve recommendations over HTTP from the registry's champion"),
    "ab-report": ("pipelines.ab_report", "CTR per A/B variant with confidence intervals and a significance test"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: newsrec <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`newsrec <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if argv[0] in {"-V", "--version"}:
        from pipelines import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"newsrec: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    # "pkg.module" runs its main(); "pkg.module:func" runs func() (one module, several subcommands).
    target, _, func = COMMANDS[name][0].partition(":")
    module = importlib.import_module(target)
    try:
        return int(getattr(module, func or "main")(rest) or 0)
    except (NewsrecError, FileNotFoundError) as error:
        # What the user can fix (pipelines.errors; a path that is not there) is one line; a bug keeps its traceback.
        print(f"newsrec {name}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
