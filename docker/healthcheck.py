"""Container health check: exit 0 when the UniRep server answers ``GET /health`` (no auth
needed) with status "ok", 1 otherwise. Port from ``$UNIREP_PORT`` (default 8000)."""
import json
import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('UNIREP_PORT', '8000')}/health"
try:
    with urllib.request.urlopen(url, timeout=4) as resp:
        ok = resp.status == 200 and json.load(resp).get("status") == "ok"
except Exception as e:  # noqa: BLE001 (any failure means unhealthy)
    print(f"{url}: {e}", file=sys.stderr)
    ok = False
sys.exit(0 if ok else 1)
