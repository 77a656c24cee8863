"""Run every benchmark script, against the services named in the environment, into one folder.

    python benchmarks/run_suite.py --out DIR [--data ../shared/data] [--wait 300] \
        [--only PATTERN ...] [--skip PATTERN ...] [--dry-run]

Services (each optional; a benchmark that needs an unset one is skipped, and says so):

    UNIREP_SERVER   http://unirep:8000     the inference server (server_load --url)
    QDRANT_URL      http://qdrant:6333     -> --db qdrant+http://qdrant:6333
    MILVUS_URI      http://milvus:19530    -> --db milvus+http://milvus:19530 (a path: Milvus Lite)
    WEAVIATE_URL    http://weaviate:8080   -> --db weaviate+http://weaviate:8080 (gRPC on 50051)
    PINECONE_HOST   http://pinecone:5080   -> --db pinecone:INDEX (PINECONE_API_KEY; any value for Pinecone Local)

Steps: encode_speed, server_load, milvus_stage2, search (FAISS + embedded stores; its ``--out``
is a folder), ingest_scale, store_latency (its own run on the embedded engines, then once per
database server with ``--db URI``), quality, frozen_baseline. Each runs in a child process
(working directory: the repository root) with its result written to ``DIR/<step>.json`` and
its output to ``DIR/logs/<step>.log`` (and to this process's output, prefixed). Every option
is checked against the script's ``--help`` first: a script that lacks an optional one
(``--out``, ``--cache``) runs without it (its result is then copied from where it writes by
default), one that lacks a required one (``--db``) is skipped. ``DIR/suite.json`` records
every step (ok, failed or skipped, and why), rewritten after each step. Nothing is skipped
silently: every skip is logged with its reason and listed in the summary. Exit status 1 when
a step failed (or, with ``--strict``, was skipped).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
logger = logging.getLogger("run_suite")


@dataclass(frozen=True)
class Service:
    name: str
    env: str
    health: str  # path probed by --wait; any answer below 500 counts as up

    def store_uri(self, value: str, pinecone_index: str) -> str:
        if self.name == "pinecone":
            return f"pinecone:{pinecone_index}"
        if self.name == "milvus" and not value.startswith(("http://", "https://")):
            return f"milvus:{value}"  # Milvus Lite file
        return f"{self.name}+{value.rstrip('/')}"


UNIREP = Service("unirep", "UNIREP_SERVER", "/health")
DATABASES = (
    Service("qdrant", "QDRANT_URL", "/readyz"),
    Service("milvus", "MILVUS_URI", "/"),  # gRPC and REST share 19530: any HTTP answer means it is up
    Service("weaviate", "WEAVIATE_URL", "/v1/.well-known/ready"),
    Service("pinecone", "PINECONE_HOST", "/indexes"),
)


DESELECTED = "not selected (--only/--skip)"


@dataclass
class Step:
    name: str
    script: str
    args: list[str] = field(default_factory=list)
    required: tuple[str, ...] = ()  # options the script must accept, else the step is skipped
    out_flag: str | None = "--out"
    result: str = ""  # the file a successful run leaves
    default_result: str | None = None  # where the script writes when it has no out_flag (from ROOT)
    needs_data: tuple[str, ...] = ()  # paths under --data
    services: tuple[Service, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None  # reason, decided before running
    # filled in while running
    status: str = "pending"
    reason: str = ""
    returncode: int | None = None
    seconds: float | None = None
    argv: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return {"name": self.name, "script": self.script, "status": self.status, "reason": self.reason,
                "returncode": self.returncode, "seconds": self.seconds, "argv": self.argv,
                "dropped_options": self.dropped, "outputs": self.outputs}


def build_plan(args: argparse.Namespace, environ: Mapping[str, str]) -> list[Step]:
    """The suite, in running order; a step whose service or data is missing carries its reason."""
    out, data, cache = Path(args.out), Path(args.data), Path(args.cache)

    def res(name: str) -> str:
        return str(out / f"{name}.json")

    def make(name: str, script: str, argv: list[str], **kw: Any) -> Step:
        kw.setdefault("default_result", f"benchmarks/results/{name}.json")
        kw.setdefault("result", res(name))
        return Step(name, script, argv, **kw)

    steps = [make("encode_speed", "encode_speed.py", ["--model", args.model, "--data", str(data),
                                                      "--out", res("encode_speed")],
                  needs_data=("flickr8k/captions_dev.tsv", "en_vi_parallel/pairs.tsv"))]
    load = make("server_load", "server_load.py", ["--model", args.model], out_flag="--output")
    server = environ.get(UNIREP.env, "").strip()
    if server:  # assumed option: load-test the running server rather than an in-process one
        load.args += ["--url", server]
        load.services = (UNIREP,)
    load.args += ["--output", res("server_load")]
    steps += [
        load,
        make("milvus_stage2", "milvus_stage2.py", ["--out", res("milvus_stage2")]),
        # FAISS at 1M plus Qdrant local / Milvus Lite; --out is a folder (search.json, .md, .png)
        make("search", "search.py", ["--model", args.model, "--data", str(data), "--cache", str(cache / "search"),
                                     "--out", str(out / "search")],
             result=str(out / "search" / "search.json"), needs_data=("flickr8k/captions_dev.tsv",)),
        # unirep index, local engine vs Ray; its --data is the Flickr8k folder
        make("ingest_scale", "ingest_scale.py", ["--data", str(data / "flickr8k"), "--out", res("ingest_scale")],
             needs_data=("flickr8k/captions_dev.tsv",)),
        # the script's own run (embedded Qdrant and Milvus Lite), then one run per database server
        make("store_latency", "store_latency.py", ["--data", str(data), "--cache", str(cache / "store_latency"),
                                                   "--out", res("store_latency")],
             needs_data=("flickr8k/captions_train.tsv",)),
    ]
    for db in DATABASES:
        value = environ.get(db.env, "").strip()
        name = f"store_latency[{db.name}]"
        st = make(name, "store_latency.py", [], default_result=None, required=("--db",), services=(db,),
                  needs_data=("flickr8k/captions_train.tsv",), result=res(f"store_latency_{db.name}"))
        if not value:
            st.skip = f"${db.env} is not set"
        else:
            st.args = ["--db", db.store_uri(value, args.pinecone_index), "--data", str(data),
                       "--cache", str(cache / "store_latency"), "--out", st.result]
            if db.name == "pinecone" and not environ.get("PINECONE_API_KEY"):
                st.env["PINECONE_API_KEY"] = "pinecone-local"  # Pinecone Local accepts any key
        steps.append(st)
    steps += [
        make("quality", "quality.py", ["--models", args.model, "--data", str(data), "--out", res("quality")],
             needs_data=("flickr8k/captions_dev.tsv", "stsb/sts-dev.csv")),
        make("frozen_baseline", "frozen_baseline.py", ["--data", str(data), "--cache", str(cache / "frozen_baseline"),
                                                       "--out", res("frozen_baseline")],
             needs_data=("flickr8k/captions_train.tsv", "vi_captions/captions.tsv")),
    ]

    for step in steps:
        missing = [p for p in step.needs_data if not (data / p).exists()]
        if step.skip is None and missing:
            step.skip = f"data not found: {', '.join(str(data / p) for p in missing)} (set --data)"
        if step.skip is None and not (BENCH / step.script).is_file():
            step.skip = f"benchmarks/{step.script} does not exist"
        if not _selected(step.name, args.only, args.skip):
            step.skip = DESELECTED
    return steps


def _selected(name: str, only: list[str], skip: list[str]) -> bool:
    if only and not any(fnmatch.fnmatchcase(name, p) for p in only):
        return False
    return not any(fnmatch.fnmatchcase(name, p) for p in skip)


# ----------------------------------------------------------------------------- services


def probe(url: str, path: str, timeout: float = 5.0) -> str | None:
    """None when ``url`` answers (any HTTP status below 500), else what went wrong."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=timeout):
            return None
    except urllib.error.HTTPError as e:
        return None if e.code < 500 else f"HTTP {e.code}"
    except (OSError, ValueError) as e:
        return str(getattr(e, "reason", e))


def wait_for(services: list[Service], environ: Mapping[str, str], seconds: float) -> dict[str, str]:
    """Poll each service that has a URL until it answers or ``seconds`` pass; name -> error of those down."""
    deadline = time.monotonic() + seconds
    down: dict[str, str] = {}
    for svc in services:
        url = environ.get(svc.env, "").strip()
        if not url.startswith(("http://", "https://")):
            continue  # unset (its steps are skipped) or a local path (Milvus Lite)
        while (err := probe(url, svc.health)) is not None and time.monotonic() < deadline:
            time.sleep(2)
        if err is None:
            logger.info("service %s at %s: up", svc.name, url)
        else:
            logger.error("service %s at %s: not reachable (%s)", svc.name, url, err)
            down[svc.name] = err
    return down


# ----------------------------------------------------------------------------- running

_OPTION = re.compile(r"(?<![\w-])(--[A-Za-z0-9][\w-]*)")


@dataclass(frozen=True)
class Options:
    """What an argparse ``--help`` says: every option, and those its usage line requires."""
    known: frozenset[str]
    required: frozenset[str]

    @classmethod
    def parse(cls, help_text: str) -> Options:
        # argparse's usage paragraph lists every option; the description below it may name others
        usage = help_text.split("\n\n", 1)[0]
        bare = usage
        while True:  # drop optional [...] groups (nested ones too) and alternatives (a | b)
            stripped = re.sub(r"\[[^\[\]]*\]|\([^()]*\|[^()]*\)", "", bare)
            if stripped == bare:
                break
            bare = stripped
        return cls(frozenset(_OPTION.findall(usage)), frozenset(_OPTION.findall(bare)))


def script_options(script: Path, cache: dict[Path, Options | str]) -> Options | str:
    """What ``script --help`` lists, or the error text when --help fails."""
    if script not in cache:
        try:
            proc = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=300, check=False)
        except subprocess.TimeoutExpired:
            cache[script] = f"{script.name} --help did not finish in 300 s"
        else:
            cache[script] = (Options.parse(proc.stdout) if proc.returncode == 0 else
                             f"--help exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return cache[script]


def fit_args(step: Step, options: frozenset[str]) -> tuple[list[str], list[str]]:
    """Step arguments the script accepts, and the options dropped (with their values)."""
    kept: list[str] = []
    dropped: list[str] = []
    i = 0
    while i < len(step.args):
        j = i + 1
        while j < len(step.args) and not step.args[j].startswith("--"):
            j += 1
        (kept if step.args[i] in options else dropped).extend(step.args[i:j])
        i = j
    return kept, [a for a in dropped if a.startswith("--")]


def run_step(step: Step, out: Path, timeout: float, help_cache: dict[Path, Options | str]) -> None:
    script = BENCH / step.script
    options = script_options(script, help_cache)
    if isinstance(options, str):
        step.status, step.reason = "failed", options
        return
    lacking = [o for o in step.required if o not in options.known]
    if lacking:
        step.status = "skipped"
        step.reason = f"{step.script} has no {', '.join(lacking)} option (assumed by run_suite)"
        return
    step.argv, step.dropped = fit_args(step, options.known)
    unmet = sorted(o for o in options.required if o not in step.argv)
    if unmet:
        step.status = "skipped"
        step.reason = f"{step.script} requires {', '.join(unmet)}, which this step does not give"
        return
    for opt in step.dropped:
        logger.warning("%s: %s has no %s option: running without it", step.name, step.script, opt)
    log_path = out / "logs" / f"{step.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(script), *step.argv]
    logger.info("%s: running %s", step.name, " ".join(cmd))
    started = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **step.env}  # stream the child's output line by line
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1)
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                print(f"[{step.name}] {line}", end="", flush=True)
            proc.wait()
        finally:
            timer.cancel()
    step.returncode = proc.returncode
    step.seconds = round(time.time() - started, 1)
    step.outputs = [str(log_path)]
    result = Path(step.result)
    if step.out_flag not in step.argv and step.default_result:
        src = ROOT / step.default_result
        if src.is_file() and src.stat().st_mtime >= started:
            result.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, result)
            logger.warning("%s: copied its result from %s (the script has no %s option)",
                           step.name, step.default_result, step.out_flag)
    if proc.returncode != 0:
        step.status = "failed"
        step.reason = (f"killed after the --timeout of {timeout:.0f} s" if killed.is_set()
                       else f"exited {proc.returncode}; see {log_path}")
    elif not result.is_file():
        step.status, step.reason = "failed", f"exited 0 but wrote no {result}"
    else:
        step.status = "ok"
    if result.is_file():
        step.outputs.insert(0, str(result))


def write_summary(steps: list[Step], out: Path, meta: dict[str, Any]) -> None:
    body = {**meta, "steps": [s.record() for s in steps],
            "counts": {k: sum(s.status == k for s in steps) for k in ("ok", "failed", "skipped", "running", "pending")}}
    tmp = out / "suite.json.tmp"
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    tmp.replace(out / "suite.json")


def match_owner(out: Path) -> None:
    """As root, give everything under ``out`` to the owner of ``out`` (a bind-mounted folder)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    st = out.stat()
    for path in [out, *out.rglob("*")]:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "suite"), help="results folder")
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="the shared data root")
    p.add_argument("--model", default="unirep-mini")
    p.add_argument("--cache", default=None,
                   help="folder for the scripts' caches (vectors, indexes), kept between runs "
                        "(default: a temporary folder, removed at the end)")
    p.add_argument("--pinecone-index", default="unirep-bench", help="index name for pinecone:INDEX")
    p.add_argument("--only", action="append", default=[], metavar="PATTERN", help="run only matching steps (glob)")
    p.add_argument("--skip", action="append", default=[], metavar="PATTERN", help="skip matching steps (glob)")
    p.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the services to answer")
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per step before it is killed")
    p.add_argument("--strict", action="store_true", help="exit 1 when a step was skipped, too")
    p.add_argument("--match-owner", action="store_true",
                   help="as root, give the files written to the owner of --out (for bind mounts)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)

    out = Path(args.out).resolve()
    with tempfile.TemporaryDirectory(prefix="unirep-suite-") as scratch:
        args.cache = str(Path(args.cache).resolve()) if args.cache else scratch
        args.out = str(out)
        steps = build_plan(args, os.environ)
        for s in steps:
            if s.skip:
                level = logging.INFO if s.skip == DESELECTED else logging.WARNING
                logger.log(level, "plan: %-24s SKIP (%s)", s.name, s.skip)
            else:
                logger.info("plan: %-24s %s %s", s.name, s.script, " ".join(s.args))
        if args.dry_run:
            return 0
        out.mkdir(parents=True, exist_ok=True)
        meta = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": f"{platform.machine()}, "
                f"{os.cpu_count()} cores, Python {platform.python_version()}",
                "services": {svc.env: os.environ.get(svc.env) for svc in (UNIREP, *DATABASES)},
                "data": args.data, "model": args.model}
        used = {svc.name: svc for s in steps if not s.skip for svc in s.services}
        down = wait_for(list(used.values()), os.environ, args.wait)
        help_cache: dict[Path, Options | str] = {}
        try:
            for step in steps:
                if step.skip:
                    step.status, step.reason = "skipped", step.skip
                elif blocked := [f"{s.name} ({down[s.name]})" for s in step.services if s.name in down]:
                    step.status, step.reason = "failed", f"service not reachable: {', '.join(blocked)}"
                else:
                    step.status = "running"
                    write_summary(steps, out, meta)
                    run_step(step, out, args.timeout, help_cache)
                level = {"ok": logging.INFO, "skipped": logging.WARNING}.get(step.status, logging.ERROR)
                if step.reason == DESELECTED:
                    level = logging.INFO
                logger.log(level, "%s: %s%s", step.name, step.status.upper(), f" ({step.reason})" * bool(step.reason))
                write_summary(steps, out, meta)
        finally:
            meta["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_summary(steps, out, meta)
            if args.match_owner:
                match_owner(out)
    counts = {k: sum(s.status == k for s in steps) for k in ("ok", "failed", "skipped")}
    logger.info("suite: %d ok, %d failed, %d skipped; summary in %s", counts["ok"], counts["failed"],
                counts["skipped"], out / "suite.json")
    for s in steps:
        if s.status != "ok":
            logger.warning("  %-24s %s: %s", s.name, s.status, s.reason)
    return 1 if counts["failed"] or (args.strict and counts["skipped"]) else 0


if __name__ == "__main__":
    sys.exit(main())
