"""``unirep serve``: run the inference server (entry point ``unirep.commands``: ``serve``)."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
from typing import Any

__all__ = ["register", "serve"]

logger = logging.getLogger("unirep_integrations.server")

API_KEY_ENV = "UNIREP_API_KEY"


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the inference server (OpenAI, TEI, rerank, Weaviate module APIs)",
                       description="Serve one UniRep model over HTTP. Binds 127.0.0.1 unless told otherwise.")
    p.add_argument("--model", default="unirep-mini", help="registered name or saved directory (default unirep-mini)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV} when set)")
    p.add_argument("--served-name", default=None, help="model name reported to clients (default: the model's name)")
    p.add_argument("--max-batch-size", type=int, default=32, help="items per model batch (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long the first queued request waits for others to share its batch (default 5)")
    p.add_argument("--no-batching", action="store_true", help="encode each request alone")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    p.add_argument("--max-items", type=int, default=2048, help="most inputs per request (default 2048)")
    p.add_argument("--device", default=None)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    from unirep_core.optional import require

    try:
        uvicorn = require("uvicorn", extra="serve")
        require("fastapi", extra="serve")
        require("prometheus_client", extra="serve")
    except ImportError as e:
        raise SystemExit(f"unirep serve: {e}") from None
    from unirep_core import UniRep

    from .app import create_app
    from .security import Limits

    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    if not _is_loopback(args.host) and api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach this address can use it "
                       "(set --api-key or $%s)", args.host, API_KEY_ENV)
    limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_items=args.max_items)
    model = UniRep.from_pretrained(args.model, device=args.device)
    app = create_app(model, api_key=api_key, max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                     batching=not args.no_batching, limits=limits, model_name=args.served_name)
    logger.warning("UniRep server: %s on http://%s:%d (auth %s; OpenAI base_url http://%s:%d/v1)",
                   app.state.service.model_name, args.host, args.port, "on" if api_key else "off",
                   args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
