"""newsrec pipelines: every step as a plain function with a thin CLI.

Heavy libraries (great_expectations, mlflow, evidently, lightgbm, airflow) are imported inside the
functions that need them, so importing this package and `newsrec --help` stay instant.
"""

__version__ = "0.1.0"
