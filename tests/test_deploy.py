"""The self-hosting kit: Dockerfile, compose file, nginx and the systemd unit.

No container engine runs on the test machines, so the image is not built here. What is
tested instead: the build context (what the Dockerfile copies exists and .dockerignore
lets it in), the image's HEALTHCHECK command run against a real server, the compose
file parsed as YAML and checked against the nginx upstreams and collab's own settings,
and the unit checked by ``systemd-analyze verify`` and ``security``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from collab.config import load_settings, tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "compose.yaml"
COMPOSE_NGINX = ROOT / "deploy" / "nginx.conf"
CLUSTER_NGINX = ROOT / "config" / "nginx-cluster.conf"
UNIT = ROOT / "deploy" / "collab.service"

# -- Dockerfile and its build context ------------------------------------------------------


@dataclass
class Instruction:
    stage: int
    keyword: str
    args: str


def dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with their continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(stage, keyword, args.strip()))
    return out


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = instructions[-1].stage
    return [i for i in instructions if i.stage == last]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for i in instructions:
        if i.keyword == "ENV":
            for word in shlex.split(i.args):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def copy_sources(instructions: list[Instruction]) -> list[str]:
    """The build-context paths of every COPY/ADD (not those copied from a stage)."""
    sources = []
    for i in instructions:
        if i.keyword in ("COPY", "ADD"):
            words = shlex.split(i.args)
            if any(w.startswith("--from=") for w in words):
                continue
            sources += [w for w in words if not w.startswith("--")][:-1]
    return sources


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as moby's patternmatcher reads it: ``*`` and ``?`` stay
    within one path element, ``**`` spans any number of them."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def dockerignore(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        pattern = line[1:].strip() if keep else line
        rules.append((keep, _pattern_regex(pattern.strip("/"))))
    return rules


def excluded(relpath: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """The last rule matching the path or one of its parent directories decides."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    verdict = False
    for keep, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = not keep
    return verdict


def context_files() -> list[str]:
    """Every file under the repository root, as a build context would see it."""
    skip = {".git", ".tox", "node_modules", ".venv", "venv"}
    return [
        p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
    ]


def test_what_the_dockerfile_copies_exists_and_the_context_lets_it_in():
    rules = dockerignore()
    sources = copy_sources(dockerfile())
    assert sources, "the Dockerfile copies nothing from the build context"
    for source in sources:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        assert files, source
        for file in files:
            assert not excluded(file.relative_to(ROOT).as_posix(), rules), file
    # what the wheel build reads: pyproject's readme and license files
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for needed in [project["readme"], *project["license-files"]]:
        assert needed in sources, needed


@pytest.mark.parametrize("path", [
    "data/jwt_secret", "data/collab.db", ".env", "deploy/.env", "tests/test_cli.py",
    ".git/config", "collab/__pycache__/app.cpython-311.pyc", "bench/run.py",
])
def test_the_build_context_leaves_out_data_secrets_and_the_rest(path):
    assert excluded(path, dockerignore())


def test_the_build_context_is_the_package_alone():
    rules = dockerignore()
    kept = {f.split("/")[0] for f in context_files() if not excluded(f, rules)}
    assert kept <= {"pyproject.toml", "README.md", "LICENSE", "collab"}, kept


def test_the_image_runs_as_a_user_with_its_data_on_a_volume():
    stage = final_stage(dockerfile())
    assert [i.stage for i in dockerfile() if i.keyword == "FROM"] == [0, 1]  # multi-stage
    users = [i.args for i in stage if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    env = env_of(stage)
    assert env["COLLAB_HOST"] == "0.0.0.0"
    volumes = [i.args for i in stage if i.keyword == "VOLUME"]
    assert volumes == [env["COLLAB_DATA_DIR"]]
    assert [i.args for i in stage if i.keyword == "EXPOSE"] == [env["COLLAB_PORT"]]
    # what the image runs with is a configuration collab accepts (load_settings validates;
    # the secret is created under /data at first start)
    settings = load_settings(env=env)
    assert settings.storage_url == "sqlite:////data/collab.db"


def healthcheck_argv() -> list[str]:
    stage = final_stage(dockerfile())
    [check] = [i.args for i in stage if i.keyword == "HEALTHCHECK"]
    argv = json.loads(check[check.index("CMD") + len("CMD"):].strip())
    assert argv[0] == "python"  # the image's own interpreter: slim images have no curl
    return [sys.executable, *argv[1:]]


async def run_healthcheck(port: int) -> int:
    proc = await asyncio.create_subprocess_exec(
        *healthcheck_argv(), env={"COLLAB_PORT": str(port), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return await asyncio.wait_for(proc.wait(), 30)


async def test_the_healthcheck_passes_when_ready_and_fails_when_not(server):
    port = server.server.port
    assert await run_healthcheck(port) == 0
    await server.app.raw_store.close()  # /readyz answers 503 now
    assert await run_healthcheck(port) == 1


# -- compose and nginx -------------------------------------------------------------------


def load_yaml(path: Path) -> dict:
    """PyYAML if this interpreter has it, else the system Python's (Debian's python3-yaml):
    collab does not depend on PyYAML for one test."""
    try:
        import yaml
    except ImportError:
        system = shutil.which("python3", path="/usr/bin")
        code = "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))"
        if system is None or subprocess.run([system, "-c", "import yaml"],
                                             capture_output=True).returncode != 0:
            pytest.skip("no YAML parser: PyYAML is not installed here or in /usr/bin/python3")
        result = subprocess.run([system, "-c", code], input=path.read_text(),
                                capture_output=True, text=True, check=True)
        return json.loads(result.stdout)
    return yaml.safe_load(path.read_text())


VARIABLE = re.compile(r"\$\{(\w+)(?::?[?-][^}]*)?\}")


def variable_names(path: Path) -> set[str]:
    return {m[1] for m in VARIABLE.finditer(path.read_text())}


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}`` / ``${VAR:?message}`` substitution."""
    return VARIABLE.sub(lambda m: env[m[1]], value)


def nginx_upstreams(path: Path) -> list[tuple[str, int]]:
    block = re.search(r"upstream collab \{(.*?)\}", path.read_text(), re.S)
    assert block, path
    return [(host, int(port))
            for host, port in re.findall(r"^\s*server\s+([\w.-]+):(\d+)", block[1], re.M)]


def location(path: Path, name: str) -> list[str]:
    """The directives of one ``location`` block, comments and indentation dropped."""
    block = re.search(r"location " + re.escape(name) + r" \{(.*?)\n\s*\}", path.read_text(),
                      re.S)
    assert block, (path, name)
    lines = (line.split("#")[0].strip() for line in block[1].splitlines())
    return [line for line in lines if line]


def test_compose_parses_and_its_nginx_upstreams_are_its_collab_nodes():
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    assert {"nginx", "redis", "mongo"} <= set(services)
    upstreams = nginx_upstreams(COMPOSE_NGINX)
    nodes = [host for host, _ in upstreams]
    assert len(nodes) == 2 and set(nodes) <= set(services), (nodes, list(services))
    expose = [i.args for i in final_stage(dockerfile()) if i.keyword == "EXPOSE"]
    assert {str(port) for _, port in upstreams} == set(expose)
    for node in nodes:
        assert (COMPOSE.parent / services[node]["build"]["context"] / "Dockerfile").resolve() \
            == DOCKERFILE
    ids = [services[node]["environment"]["COLLAB_NODE_ID"] for node in nodes]
    assert len(set(ids)) == len(ids), ids
    nginx = services["nginx"]
    mounted = {v.split(":")[0] for v in nginx["volumes"]}
    assert "./nginx.conf" in mounted
    [published] = nginx["ports"]
    listen = re.search(r"^\s*listen (\d+);", COMPOSE_NGINX.read_text(), re.M)
    assert listen and published.split(":")[-1] == listen[1]


def test_compose_secrets_come_from_the_environment_and_the_nodes_accept_their_settings():
    services = load_yaml(COMPOSE)["services"]
    fake = {name: f"{name.lower()}-{'s' * 32}" for name in variable_names(COMPOSE)}
    for name in ("collab-1", "collab-2"):
        environment = services[name]["environment"]
        for key, value in environment.items():
            if "SECRET" in key or "PASSWORD" in key:
                assert VARIABLE.fullmatch(value), (key, value)
            if "://" in value and urlsplit(value).password is not None:
                assert VARIABLE.fullmatch(urlsplit(value).password), (key, value)
        env = {key: interpolate(str(value), fake) for key, value in environment.items()}
        settings = load_settings(env=env)  # validated, or ConfigError
        assert settings.registry_url.startswith("redis://")
        assert settings.storage_url.startswith("mongodb://")
    for service in services.values():  # no literal password anywhere else either
        for key, value in (service.get("environment") or {}).items():
            if "SECRET" in key or "PASSWORD" in key:
                assert VARIABLE.fullmatch(str(value)), (key, value)


def test_compose_nginx_proxies_socketio_like_the_cluster_example():
    assert location(COMPOSE_NGINX, "/socket.io/") == location(CLUSTER_NGINX, "/socket.io/")


# -- the systemd unit --------------------------------------------------------------------


def unit_entries(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd keys may repeat, so not configparser)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


def test_unit_runs_collab_serve_as_a_dynamic_user_in_its_state_directory():
    service = unit_entries()["Service"]
    assert service["ExecStart"][0].endswith("/collab serve")
    assert "COLLAB_DATA_DIR=%S/collab" in service["Environment"]
    assert service["StateDirectory"] == ["collab"]
    assert service["DynamicUser"] == ["yes"]
    for key, value in [("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                       ("PrivateTmp", "yes"), ("ProtectHome", "yes")]:
        assert service[key] == [value], key
    assert set(service["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6",
                                                                   "AF_UNIX"}


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                           reason="systemd-analyze is not installed")


def unit_here(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's ``collab``: verify checks
    that the program exists, and /opt/collab is where the docs install it, not here."""
    exe = Path(sys.executable).parent / "collab"
    if not exe.exists():
        pytest.skip(f"no collab script beside {sys.executable}")
    text = UNIT.read_text().replace("/opt/collab/bin/collab", str(exe))
    assert text != UNIT.read_text()
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit_here(tmp_path))],
                            capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values too; it only says so on stderr
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
def test_unit_exposure_is_low(tmp_path):
    # --threshold is in tenths: 20 means an overall exposure of 2.0 ("OK") at most
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--threshold=20",
         str(unit_here(tmp_path))], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-2000:]
