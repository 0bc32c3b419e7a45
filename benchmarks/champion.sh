#!/usr/bin/env bash
# Builds a champion for the serving benchmark without touching the project's data/ or registry:
# the whole offline flow (synth -> validate -> split -> aggregates -> learned -> candidates -> features -> train ->
# evaluate -> register -> promote) on one synthetic profile, in DIR with its own SQLite MLflow registry.
#   benchmarks/champion.sh demo /tmp/bench/demo
#   HOURS=96 benchmarks/champion.sh globo /tmp/bench/globo   # Globo's catalogue and users, first 96 hours
#   HOLD_BACK=4 benchmarks/champion.sh demo /tmp/bench/demo  # train without the last 4 hours, then publish
#                                                            # one hourly serving index per held-back hour
# then: benchmarks/bench_serve.py --tracking-uri sqlite:////tmp/bench/demo/mlflow.db [--index-root DIR/serving_index]
set -euo pipefail
PROFILE=${1:?profile (tiny|demo|globo)}
DIR=$(realpath -m "${2:?work folder}")
BIN=$(dirname "$0")/../.venv/bin
mkdir -p "$DIR"
export NEWSREC__MLFLOW__TRACKING_URI="sqlite:///$DIR/mlflow.db"
export NEWSREC__MLFLOW__ARTIFACT_ROOT="$DIR/mlartifacts"
D="$DIR/data"
t() { local s=$SECONDS; "$@"; echo "  [$1 $2: $((SECONDS - s)) s]" >&2; }
[ -d "$D/raw/clicks" ] || t "$BIN/newsrec" synth --profile "$PROFILE" --out "$D/raw" ${HOURS:+--hours "$HOURS"}
mkdir -p "$D/quarantine/clicks"
[ -d "$D/validated" ] || t "$BIN/newsrec" validate --data-root "$D" --all
# Hold the last HOLD_BACK validated hours out of training: they arrive "after" the model, as the hourly
# refresh sees them in service.
HELD=()
if [ "${HOLD_BACK:-0}" -gt 0 ]; then
  mkdir -p "$D/held"
  mapfile -t HELD < <(ls "$D/validated/clicks" | sort | tail -n "$HOLD_BACK")
  for h in "${HELD[@]}"; do mv "$D/validated/clicks/$h" "$D/held/$h"; done
fi
t "$BIN/newsrec" split --data-root "$D" --out "$D/split.json"
t "$BIN/newsrec" aggregates --data-root "$D" --all
t "$BIN/newsrec" learned --data-root "$D" --split "$D/split.json" --out "$DIR/models/learned"
t "$BIN/newsrec" candidates --data-root "$D" --split "$D/split.json" --out "$D/candidates" \
  --index-out "$D/indexes" --metrics "$DIR/metrics/candidates.json" --learned "$DIR/models/learned"
t "$BIN/newsrec" features --data-root "$D" --split "$D/split.json" --out "$D/features"
t "$BIN/newsrec" train --split "$D/split.json" --candidates "$D/candidates" --features "$D/features" \
  --data-root "$D" --out "$DIR/models/ranker"
t "$BIN/newsrec" evaluate --data-root "$D" --split "$D/split.json" --candidates "$D/candidates" \
  --indexes "$D/indexes" --model "$DIR/models/ranker" --features "$D/features" --out "$DIR/metrics"
t "$BIN/newsrec" register --data-root "$D" --split "$D/split.json" --ranker "$DIR/models/ranker" \
  --features "$D/features" --indexes "$D/indexes" --eval "$DIR/metrics/eval.json" \
  --eval-table "$DIR/metrics/eval_table.md" --bundle-out "$DIR/models/bundle" --out "$DIR/models/registered.json"
"$BIN/newsrec" promote || true
if [ "${#HELD[@]}" -gt 0 ]; then
  for h in "${HELD[@]}"; do mv "$D/held/$h" "$D/validated/clicks/$h"; done
  t "$BIN/newsrec" aggregates --data-root "$D" --all
  export NEWSREC__REFRESH__INDEX_DIR="$DIR/serving_index"
  for h in "${HELD[@]}"; do t "$BIN/newsrec" refresh --data-root "$D" --hour "$((10#${h#hour=}))"; done
  echo "serving indexes: $DIR/serving_index"
fi
echo "champion ready: tracking URI $NEWSREC__MLFLOW__TRACKING_URI"
