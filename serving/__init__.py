"""Online serving: the registry's champion behind a FastAPI app, with per-user state and an A/B split."""
