"""tests.deploy: docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is interpolated the way Compose does it (`${VAR:?msg}` and friends, with
test secrets), validated against the Compose Specification's JSON schema (the copy
check-jsonschema vendors: nothing is downloaded), and then held to what the code expects:
every NUDGE_* variable is a Settings field, the services find each other, the search
attributes are the ones journeys use, and nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
import tomllib
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from core.config import (
    DEV_ADMIN_TOKEN,
    DEV_LINK_SECRET,
    DEV_PAYLOAD_KEYS,
    DEV_WEBHOOK_SECRET,
    DEV_WRITE_KEY,
    Environment,
    Settings,
)
from temporal import search_attributes

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
ENV_EXAMPLE = ROOT / ".env.example"

SECRETS = {
    "POSTGRES_PASSWORD": "pg-test-password",
    "NUDGE_WRITE_KEY": "wk-test-3f9a",
    "NUDGE_ADMIN_TOKEN": "at-test-77c1",
    "NUDGE_WEBHOOK_SECRET": "whsec_dGVzdC1zZWNyZXQtZm9yLWNvbXBvc2U=",
    "NUDGE_LINK_SECRET": "ls-test-5d2e",
    "NUDGE_PAYLOAD_KEYS": "k1:dGVzdC1wYXlsb2FkLWtleS1mb3ItY29tcG9zZS0zMmI=",
}
APP_SERVICES = ("migrate", "api", "worker")
COMMANDS = {("nudge", "migrate"), ("nudge", "api"), ("nudge", "worker")}


# -- Compose's interpolation ----------------------------------------------------------------


class InterpolationError(ValueError):
    pass


_VARIABLE = re.compile(r"\$(?:(\$)|\{([^}]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?$", re.DOTALL)


def interpolate_text(text: str, env: Mapping[str, str]) -> str:
    """`$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`,
    `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}`, as the Compose Specification defines them."""

    def replace(match: re.Match[str]) -> str:
        escaped, braced, bare = match.groups()
        if escaped:
            return "$"
        if bare:
            return env.get(bare, "")
        parsed = _BRACED.match(braced)
        if parsed is None:
            raise InterpolationError(f"invalid interpolation ${{{braced}}}")
        name, operator, word = parsed.groups()
        if word and "${" in word:
            raise InterpolationError(f"nested interpolation is not supported here: ${{{braced}")
        value = env.get(name)
        unset_or_empty = value is None or (value == "" and operator and operator[0] == ":")
        if operator is None:
            return value or ""
        if operator.endswith("-"):
            return interpolate_text(word, env) if unset_or_empty else str(value)
        if operator.endswith("?"):
            if unset_or_empty:
                raise InterpolationError(f"required variable {name} is missing a value: {word}")
            return str(value)
        return "" if unset_or_empty else interpolate_text(word, env)

    return _VARIABLE.sub(replace, text)


def interpolate(node: Any, env: Mapping[str, str]) -> Any:
    """Values are interpolated, keys are not."""
    if isinstance(node, str):
        return interpolate_text(node, env)
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value, env) for value in node]
    return node


def load_compose(env: Mapping[str, str] = SECRETS) -> dict[str, Any]:
    raw = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(raw, dict)
    return interpolate(raw, env)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]  # type: ignore[no-any-return]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment, from either of Compose's two spellings."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def nudge_env(service: Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in environment(service).items() if k.startswith("NUDGE_")}


def command(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(shlex.split(value) if isinstance(value, str) else value)


def published(service: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(host ip, host port, container port) for every port a service publishes."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append(
                (str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"]))
            )
            continue
        spec = str(port).split("/", 1)[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            out.append((parts[0].strip("[]"), parts[1], parts[2]))
        elif len(parts) == 2:
            out.append(("", parts[0], parts[1]))
        else:
            out.append(("", "", parts[0]))
    return out


def test_interpolation_follows_the_compose_rules() -> None:
    env = {"SET": "value", "EMPTY": ""}
    cases = {
        "$$SET": "$SET",
        "$SET and ${SET}": "value and value",
        "${UNSET}|$UNSET": "|",
        "${UNSET:-fallback}|${EMPTY:-fallback}|${EMPTY-kept}": "fallback|fallback|",
        "${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}|${UNSET+alt}": "alt||alt|",
        "${SET:?needed}|${EMPTY?ok}": "value|",
    }
    for text, expected in cases.items():
        assert interpolate_text(text, env) == expected, text
    for text in ("${UNSET:?set UNSET}", "${EMPTY:?set EMPTY}", "${UNSET?set UNSET}"):
        with pytest.raises(InterpolationError, match="set"):
            interpolate_text(text, env)
    # Compose allows nesting; this reader does not, and says so rather than misread it.
    with pytest.raises(InterpolationError, match="nested"):
        interpolate_text("${UNSET:-${SET}}", env)


# -- the Compose Specification --------------------------------------------------------------


@cache
def compose_schema() -> dict[str, Any]:
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    path = vendored / "compose-spec.json"
    assert path.is_file(), "check-jsonschema (dev extras) no longer vendors compose-spec.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def schema_errors(document: Any) -> list[str]:
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]


def test_the_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


@pytest.mark.parametrize(
    "break_it",
    [
        lambda c: c.update(servics=c.pop("services")),
        lambda c: c["services"]["api"].update(ports="127.0.0.1:8000:8000"),
        lambda c: c["services"]["api"].update(depends_on={"migrate": {"condition": "done"}}),
        lambda c: c["services"]["worker"].update(comand=["nudge", "worker"]),
        lambda c: c["services"]["postgres"]["healthcheck"].update(test=5),
    ],
    ids=["top-level typo", "ports not a list", "unknown condition", "service typo", "bad test"],
)
def test_the_schema_check_catches_a_broken_file(break_it: Any) -> None:
    broken = load_compose()
    break_it(broken)
    assert schema_errors(broken)


class RecordingEnv(dict[str, str]):
    """An environment that remembers which variables were looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def test_every_secret_is_required_and_listed_in_env_example() -> None:
    env = RecordingEnv(SECRETS)
    load_compose(env)
    assert env.asked == set(SECRETS)
    for name in SECRETS:
        with pytest.raises(InterpolationError, match=f"required variable {name} "):
            load_compose({**SECRETS, name: ""})
        with pytest.raises(InterpolationError, match=f"set {name} in .env"):
            load_compose({k: v for k, v in SECRETS.items() if k != name})
    listed = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert set(SECRETS) <= listed, f"not in .env.example: {sorted(set(SECRETS) - listed)}"


def test_env_example_holds_no_secret_values() -> None:
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            assert value == "", f"{name} should be empty in .env.example"


# -- Nudge's configuration ------------------------------------------------------------------


def test_the_app_services_share_one_configuration(services: dict[str, Any]) -> None:
    envs = [nudge_env(services[name]) for name in APP_SERVICES]
    assert envs[0], "the api service sets no NUDGE_* variables"
    assert envs[1:] == envs[:-1]
    assert len({str(services[name].get("image")) for name in APP_SERVICES}) == 1


def test_the_shared_configuration_is_the_x_nudge_env_anchor() -> None:
    raw = yaml.safe_load(COMPOSE.read_text())
    anchor = raw["x-nudge-env"]
    for name in APP_SERVICES:
        assert raw["services"][name]["environment"] == anchor, name


def test_every_nudge_variable_is_a_settings_field(services: dict[str, Any]) -> None:
    fields = {f"NUDGE_{name.upper()}" for name in Settings.model_fields}
    for name, service in services.items():
        unknown = set(nudge_env(service)) - fields
        assert not unknown, f"{name} sets variables Settings does not read: {sorted(unknown)}"
    dockerfile_env = set(re.findall(r"\b(NUDGE_[A-Z0-9_]+)=", DOCKERFILE.read_text()))
    assert dockerfile_env <= fields


@pytest.fixture
def api_settings(services: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the api container builds them: from its environment alone."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("NUDGE_"):
            monkeypatch.delenv(name)
    for name, value in environment(services["api"]).items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def test_settings_from_the_api_environment_validate(api_settings: Settings) -> None:
    assert api_settings.environment is Environment.production
    assert api_settings.write_key == SECRETS["NUDGE_WRITE_KEY"]
    assert api_settings.admin_token == SECRETS["NUDGE_ADMIN_TOKEN"]
    assert api_settings.webhook_secrets == [SECRETS["NUDGE_WEBHOOK_SECRET"]]
    assert api_settings.api_host == "0.0.0.0"


def test_the_api_port_is_the_one_published(
    api_settings: Settings, services: dict[str, Any]
) -> None:
    [(host_ip, host_port, container_port)] = published(services["api"])
    assert int(container_port) == api_settings.api_port
    assert host_ip == "127.0.0.1" and host_port


def test_the_temporal_address_names_the_temporal_service(
    api_settings: Settings, services: dict[str, Any]
) -> None:
    host, _, port = api_settings.temporal_address.rpartition(":")
    assert host == "temporal" and host in services
    assert int(port) == 7233
    for name in ("temporal", "temporal-setup", "temporal-ui"):
        assert environment(services[name])["TEMPORAL_ADDRESS"] == api_settings.temporal_address
    assert any(target == port for _, _, target in published(services["temporal"]))


def test_the_database_url_names_the_postgres_service(
    api_settings: Settings, services: dict[str, Any]
) -> None:
    url = make_url(api_settings.database_url)
    postgres = environment(services["postgres"])
    assert url.drivername == "postgresql+asyncpg"
    assert url.host == "postgres" and url.host in services
    assert url.port == 5432
    assert url.username == postgres["POSTGRES_USER"]
    assert url.password == postgres["POSTGRES_PASSWORD"] == SECRETS["POSTGRES_PASSWORD"]
    assert url.database == postgres["POSTGRES_DB"]


def test_temporal_runs_on_the_same_postgres(services: dict[str, Any]) -> None:
    temporal = environment(services["temporal"])
    postgres = environment(services["postgres"])
    assert temporal["DB"] == "postgres12"
    assert temporal["POSTGRES_SEEDS"] == "postgres"
    assert temporal["DB_PORT"] == "5432"
    assert temporal["POSTGRES_USER"] == postgres["POSTGRES_USER"]
    assert temporal["POSTGRES_PWD"] == postgres["POSTGRES_PASSWORD"]
    assert services["temporal"]["image"].startswith("temporalio/auto-setup:")
    # Custom search attribute slots are few on SQL visibility; the demo ones are not wanted.
    assert temporal["SKIP_ADD_CUSTOM_SEARCH_ATTRIBUTES"] == "true"


def test_temporal_setup_registers_the_journey_search_attributes(
    api_settings: Settings, services: dict[str, Any]
) -> None:
    setup = services["temporal-setup"]
    env = environment(setup)
    registered = dict(pair.split("=", 1) for pair in env["SEARCH_ATTRIBUTES"].split())
    assert registered == search_attributes.by_name()
    assert env["TEMPORAL_NAMESPACE"] == api_settings.temporal_namespace
    assert environment(services["temporal"])["DEFAULT_NAMESPACE"] == api_settings.temporal_namespace
    script = "\n".join(command(setup.get("entrypoint")) + command(setup.get("command")))
    assert "temporal operator search-attribute create" in script
    assert '--name "$name" --type "$type"' in script
    assert "$SEARCH_ATTRIBUTES" in script
    assert setup["image"].startswith("temporalio/admin-tools:")


# -- start-up order, ports, images ----------------------------------------------------------


def test_dependencies_exist_and_their_conditions_can_be_met(services: dict[str, Any]) -> None:
    one_shot = {"migrate", "temporal-setup"}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for target, how in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = how.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} has no healthcheck"
            if condition == "service_completed_successfully":
                assert target in one_shot, f"{target} is not a one-shot service"
    for name in one_shot:
        assert services[name].get("restart") == "no", name


def test_the_start_up_order(services: dict[str, Any]) -> None:
    def condition(name: str, target: str) -> str:
        return str(services[name]["depends_on"][target]["condition"])

    assert condition("temporal", "postgres") == "service_healthy"
    assert condition("migrate", "postgres") == "service_healthy"
    assert condition("temporal-setup", "temporal") == "service_healthy"
    for name in ("api", "worker"):
        assert condition(name, "migrate") == "service_completed_successfully"
        assert condition(name, "temporal-setup") == "service_completed_successfully"
        assert condition(name, "temporal") == "service_healthy"
    assert condition("temporal-ui", "temporal") == "service_healthy"


def test_published_ports_bind_to_localhost_only(services: dict[str, Any]) -> None:
    found = {}
    for name, service in services.items():
        for host_ip, host_port, container_port in published(service):
            assert host_ip == "127.0.0.1", f"{name} publishes {host_port} beyond localhost"
            found[name] = container_port
    assert found == {"api": "8000", "temporal": "7233", "temporal-ui": "8080"}


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and "/" not in tag, f"{name}: {image}"
    assert services["postgres"]["image"] == "postgres:16"
    assert services["temporal-ui"]["image"].startswith("temporalio/ui:")


def test_postgres_keeps_its_data_in_a_named_volume(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    [volume] = services["postgres"]["volumes"]
    name, _, target = volume.partition(":")
    assert target == "/var/lib/postgresql/data"
    assert name in compose["volumes"]


# -- the image and the commands -------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def exec_form(value: str) -> tuple[str, ...]:
    parsed = json.loads(value) if value.startswith("[") else shlex.split(value)
    return tuple(parsed)


def test_the_image_runs_the_api_as_a_non_root_user() -> None:
    instructions = dockerfile_instructions()
    stages = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    final = instructions[stages[-1] :]
    assert all(rest.split()[0] == "python:3.11-slim" for k, rest in instructions if k == "FROM")
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entrypoint = [exec_form(rest) for keyword, rest in final if keyword == "ENTRYPOINT"]
    cmd = [exec_form(rest) for keyword, rest in final if keyword == "CMD"]
    assert cmd, "no CMD in the final stage"
    default = (entrypoint[-1] if entrypoint else ()) + cmd[-1]
    assert default == ("nudge", "api")
    assert any("pip install ." in rest for keyword, rest in instructions if keyword == "RUN")


def test_nudge_is_the_projects_script() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "nudge" in pyproject["project"]["scripts"]


def test_the_app_services_run_nudge_commands(services: dict[str, Any]) -> None:
    entrypoint = [
        exec_form(rest) for keyword, rest in dockerfile_instructions() if keyword == "ENTRYPOINT"
    ]
    prefix = entrypoint[-1] if entrypoint else ()
    for name in APP_SERVICES:
        service = services[name]
        assert service.get("build") == "." and "entrypoint" not in service, name
        assert prefix + command(service["command"]) == ("nudge", name), name
        assert prefix + command(service["command"]) in COMMANDS


def test_the_build_context_leaves_out_local_state_and_secrets() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".env", ".venv", ".git", ".nudge", "*.db"} <= ignored


# -- production refuses placeholder secrets -------------------------------------------------


PRODUCTION = {
    "environment": "production",
    "write_key": "wk-real",
    "admin_token": "at-real",
    "webhook_secret": "whsec_cmVhbC1zZWNyZXQ=",
    "link_secret": "real-link-secret",
    "payload_keys": "k1:dGVzdC1wYXlsb2FkLWtleS1mb3ItY29tcG9zZS0zMmI=",
}


@pytest.mark.parametrize(
    ("field", "placeholder"),
    [
        ("write_key", DEV_WRITE_KEY),
        ("admin_token", DEV_ADMIN_TOKEN),
        ("webhook_secret", DEV_WEBHOOK_SECRET),
        ("write_key", ""),
        ("admin_token", "  "),
        ("webhook_secret", " , "),
        ("webhook_secret", f"whsec_cmVhbC1zZWNyZXQ=,{DEV_WEBHOOK_SECRET}"),
        ("link_secret", DEV_LINK_SECRET),
        ("link_secret", ""),
        ("payload_keys", DEV_PAYLOAD_KEYS),
        ("payload_keys", f"k2:dGVzdC1wYXlsb2FkLWtleS1mb3ItY29tcG9zZS0zMmI=,{DEV_PAYLOAD_KEYS}"),
    ],
)
def test_production_refuses_placeholder_secrets(field: str, placeholder: str) -> None:
    with pytest.raises(ValidationError, match=f"NUDGE_{field.upper()} must be set"):
        Settings(_env_file=None, **{**PRODUCTION, field: placeholder})  # type: ignore[arg-type]


def test_production_refuses_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith("NUDGE_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("NUDGE_ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="NUDGE_WRITE_KEY"):
        Settings(_env_file=None)


def test_production_accepts_real_secrets_and_dev_accepts_the_defaults() -> None:
    Settings(_env_file=None, **PRODUCTION)  # type: ignore[arg-type]
    dev = Settings(_env_file=None, environment="dev")
    assert dev.write_key == DEV_WRITE_KEY
