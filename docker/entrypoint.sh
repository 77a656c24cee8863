#!/bin/sh
# Entry point of the UniRep images. With no arguments, or with options only
# (docker run IMAGE --max-batch-size 64), it runs `unirep serve` on all interfaces,
# configured from the environment:
#   UNIREP_MODEL (default unirep-mini), UNIREP_HOST (0.0.0.0), UNIREP_PORT (8000),
#   UNIREP_DEVICE (default: CUDA when visible, else CPU),
#   UNIREP_API_KEY (read by `unirep serve` itself: every endpoint but /health and
#   /.well-known/* then needs "Authorization: Bearer KEY").
# Anything else is run as given: docker run IMAGE unirep models
set -eu
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    if [ -n "${UNIREP_DEVICE:-}" ]; then
        set -- --device "$UNIREP_DEVICE" "$@"
    fi
    set -- unirep serve --host "${UNIREP_HOST:-0.0.0.0}" --port "${UNIREP_PORT:-8000}" \
        --model "${UNIREP_MODEL:-unirep-mini}" "$@"
fi
exec "$@"
