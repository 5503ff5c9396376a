"""docker-compose.yml keeps its promises: services, health, order, volumes, secrets, GPU."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.config import Settings
from tests.deploy.deployfiles import COMPOSE, ENV_EXAMPLE, compose

MOVIEREC_SERVICES = ("migrate", "bootstrap", "api", "worker", "api-gpu", "worker-gpu")
LONG_RUNNING = ("api", "worker", "api-gpu", "worker-gpu")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|API_?KEY", re.IGNORECASE)
REFERENCE = re.compile(r"^\$\{\w+(:?[-?][^}]*)?\}$")
# user[:password]@ of a URL, where either part may be a ${...} reference.
URL_CREDENTIALS = re.compile(
    r"://(?P<user>\$\{[^}]*\}|[^:@/]*)(?::(?P<password>\$\{[^}]*\}|[^@/]*))?@"
)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return compose()


@pytest.fixture(scope="module")
def services(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["services"]


def depends(service: dict[str, Any]) -> dict[str, str]:
    """``depends_on`` as {service: condition} (long syntax is required here)."""
    deps = service.get("depends_on", {})
    assert isinstance(deps, dict), "depends_on must use the long syntax with conditions"
    return {name: spec["condition"] for name, spec in deps.items()}


def test_every_service_is_present(services: dict[str, Any]) -> None:
    assert set(services) >= {"db", *MOVIEREC_SERVICES}


def test_database_is_postgres_16_on_a_named_volume_with_pg_isready(
    spec: dict[str, Any], services: dict[str, Any]
) -> None:
    db = services["db"]
    assert db["image"].startswith("postgres:16")
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    volume = db["volumes"][0].split(":")[0]
    assert volume in spec["volumes"], "the database lives on a named volume"
    assert db["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")


def test_startup_order(services: dict[str, Any]) -> None:
    assert depends(services["migrate"]) == {"db": "service_healthy"}
    assert depends(services["bootstrap"]) == {
        "db": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    for name in LONG_RUNNING:
        assert depends(services[name]) == {
            "db": "service_healthy",
            "migrate": "service_completed_successfully",
        }, name


def test_one_shot_services_do_not_restart(services: dict[str, Any]) -> None:
    for name in ("migrate", "bootstrap"):
        assert services[name]["restart"] == "no"
        assert services[name].get("profiles") is None, f"{name} runs on a plain `up`"


def test_api_has_a_liveness_healthcheck_and_publishes_8000(services: dict[str, Any]) -> None:
    for name in ("api", "api-gpu"):
        api = services[name]
        assert "/healthz" in " ".join(api["healthcheck"]["test"])
        assert not api["healthcheck"].get("disable")
        (port,) = api["ports"]
        assert port.endswith(":8000")


def test_non_http_containers_switch_the_image_healthcheck_off(services: dict[str, Any]) -> None:
    # The image's HEALTHCHECK probes port 8000, which only the API listens on.
    for name in ("migrate", "bootstrap", "worker", "worker-gpu"):
        assert services[name]["healthcheck"] == {"disable": True}, name


def test_api_and_worker_can_scale(services: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        assert "container_name" not in services[name], f"{name} could not be scaled"
    # The published port comes from a variable, so it can be a range for several replicas.
    assert re.fullmatch(r"\$\{\w+:-8000\}:8000", services["api"]["ports"][0])


def test_checkpoints_live_on_a_shared_named_volume(
    spec: dict[str, Any], services: dict[str, Any]
) -> None:
    for name in ("bootstrap", *LONG_RUNNING):
        service = services[name]
        model_dir = service["environment"]["MOVIEREC_MODEL_DIR"]
        mounts = dict(v.split(":")[::-1][:2][::-1] for v in service["volumes"])
        volume = {target: source for source, target in mounts.items()}[model_dir]
        assert volume == "models", name
    assert {"pgdata", "models"} <= set(spec["volumes"])


def test_movierec_containers_read_env_file_and_postgres_url(services: dict[str, Any]) -> None:
    for name in MOVIEREC_SERVICES:
        service = services[name]
        assert service["env_file"] == ".env", name
        url = service["environment"]["MOVIEREC_DATABASE_URL"]
        assert url.startswith("postgresql+psycopg://") and "@db:5432/" in url, name
        assert "${POSTGRES_PASSWORD:?" in url, name


def test_gpu_profile_reserves_an_nvidia_device(services: dict[str, Any]) -> None:
    gpu_services = [n for n, s in services.items() if "gpu" in s.get("profiles", [])]
    assert set(gpu_services) == {"api-gpu", "worker-gpu"}
    for name in gpu_services:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}], name
        assert services[name]["environment"]["MOVIEREC_DEVICE"] == "cuda"
        assert "cu" in services[name]["build"]["args"]["TORCH_INDEX"].rsplit("/", 1)[-1]
    for name in ("db", "migrate", "bootstrap", "api", "worker"):
        assert "profiles" not in services[name], f"{name} must start on a plain `up`"


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (dotted key path, scalar value) pair of a YAML document."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _walk(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _walk(v, f"{path}[{i}]")]
    return [(path, node)]


def test_no_literal_secret_in_compose(spec: dict[str, Any]) -> None:
    for path, value in _walk(spec):
        key = path.rsplit(".", 1)[-1]
        if SECRET_NAME.search(key):
            assert isinstance(value, str) and REFERENCE.match(value), (
                f"{path} must reference the environment, not hold a value"
            )
        credentials = URL_CREDENTIALS.search(value) if isinstance(value, str) else None
        if credentials and credentials["password"]:
            assert REFERENCE.match(credentials["password"]), f"{path} embeds a password"
    assert "password" not in COMPOSE.read_text().lower().replace("postgres_password", "")


def test_env_example_documents_every_setting_and_holds_no_secret() -> None:
    text = ENV_EXAMPLE.read_text()
    assigned = dict(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", text, flags=re.MULTILINE))
    for field in Settings.model_fields:
        assert f"MOVIEREC_{field.upper()}" in assigned, f"MOVIEREC_{field.upper()} undocumented"
    for name, value in assigned.items():
        if SECRET_NAME.search(name):
            assert value == "", f"{name} has a value in .env.example"
    # Every ${VARIABLE} compose reads (other than the secrets) is documented too.
    for name in set(re.findall(r"\$\{(\w+)", COMPOSE.read_text())):
        assert name in assigned, f"{name} is used by docker-compose.yml but not documented"


def test_deployment_guide_lists_every_setting() -> None:
    guide = (ENV_EXAMPLE.parent / "docs" / "deployment.md").read_text()
    for field in Settings.model_fields:
        assert f"| `MOVIEREC_{field.upper()}` |" in guide, (
            f"MOVIEREC_{field.upper()} not in the guide"
        )
