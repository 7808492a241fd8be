"""Each environment takes its key from a different secret store; clients send their own key.

Real servers on 127.0.0.1 only: OpenBao (Vault API), moto (AWS Secrets Manager), the GCP
Secret Manager stand-in, and the loopback Mistral server that records which key it saw.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from mistral_nbenv import SecretBackendError, get_client, use_environment
from mistral_nbenv.workspace import get_api_key
from tests.conftest import ProjectFactory, fake_key

KEYS = {
    "development": fake_key("vault-dev"),
    "staging": fake_key("aws-staging"),
    "production": fake_key("gcp-prod"),
    "qa": fake_key("env-qa"),
}
MESSAGES = [{"role": "user", "content": "which key?"}]


@pytest.fixture
def stores(
    project: ProjectFactory,
    monkeypatch: pytest.MonkeyPatch,
    openbao_server: Any,
    moto_server: Any,
    gcp_secret_server: Any,
    mistral_server: Any,
) -> dict[str, Any]:
    """One settings file, four environments, four key sources."""
    openbao_server.write("mistral/dev", {"api_key": KEYS["development"]})
    moto_server.create_secret("mistral/staging", json.dumps({"key": KEYS["staging"]}))
    gcp_secret_server.add("acme", "mistral-prod", "1", KEYS["production"])
    monkeypatch.setenv("QA_KEY", KEYS["qa"])
    project(
        f"""
        [default]
        server_url = "{mistral_server.url}"
        [default.secrets]
        vault_url = "{openbao_server.url}"
        aws_region = "{moto_server.region}"
        aws_endpoint_url = "{moto_server.url}"
        gcp_emulator_host = "{gcp_secret_server.host}"
        [default.cache]
        enabled = false
        [qa]
        model = "qa-model"
        """,
        f"""
        [default.secrets]
        vault_token = "{openbao_server.token}"
        [development]
        api_key = "vault:secret/mistral/dev#api_key"
        [staging]
        api_key = "aws-sm:mistral/staging#key"
        [production]
        api_key = "gcp-sm:projects/acme/secrets/mistral-prod/versions/latest"
        [qa]
        api_key = "env:QA_KEY"
        """,
    )
    return {
        "vault": openbao_server,
        "aws": moto_server,
        "gcp": gcp_secret_server,
        "mistral": mistral_server,
    }


def test_each_environment_sends_its_own_key(stores: dict[str, Any]) -> None:
    server = stores["mistral"]
    for env in ("development", "staging", "production", "qa"):
        use_environment(env, confirm=True)
        client = get_client()
        assert KEYS[env] not in repr(client)
        reply = client.chat.complete(messages=MESSAGES)
        assert reply.choices[0].message.content == "Echo: which key?"
        assert server.last_request.api_key == KEYS[env]
    assert [r.api_key for r in server.requests] == list(KEYS.values())


def test_keys_are_fetched_once_and_reused_in_memory(stores: dict[str, Any]) -> None:
    for _ in range(5):
        for env in ("development", "staging", "production"):
            get_api_key(env)
    assert stores["vault"].read_count("mistral/dev") == 1
    assert stores["aws"].request_count("GetSecretValue") == 1
    assert stores["gcp"].access_count == 1


def test_cache_seconds_zero_fetches_every_time(
    stores: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MISTRAL_NBENV_SECRETS__CACHE_SECONDS", "0")
    for _ in range(3):
        get_api_key("production")
    assert stores["gcp"].access_count == 3


def test_only_the_environment_in_use_is_resolved(stores: dict[str, Any]) -> None:
    get_client("staging").chat.complete(messages=MESSAGES)
    assert stores["aws"].request_count("GetSecretValue") == 1
    assert stores["vault"].read_count("mistral/dev") == 0
    assert stores["gcp"].access_count == 0


def test_a_missing_secret_names_environment_backend_and_reference(
    stores: dict[str, Any],
) -> None:
    from mistral_nbenv import workspace

    assert get_api_key("staging").value.get_secret_value() == KEYS["staging"]
    stores["aws"].client("secretsmanager").delete_secret(
        SecretId="mistral/staging", ForceDeleteWithoutRecovery=True
    )
    workspace.reset()
    with pytest.raises(SecretBackendError) as info:
        get_api_key("staging")
    message = str(info.value)
    assert "Environment 'staging'" in message
    assert "aws-sm:mistral/staging#key" in message
    assert info.value.environment == "staging"
    assert KEYS["staging"] not in message


def test_a_store_that_is_down_is_a_clear_error(stores: dict[str, Any]) -> None:
    stores["vault"].stop()
    with pytest.raises(SecretBackendError) as info:
        get_client("development")
    assert "Environment 'development'" in str(info.value)
    assert "vault:secret/mistral/dev#api_key" in str(info.value)
    assert info.value.__cause__ is not None
