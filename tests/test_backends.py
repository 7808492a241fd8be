"""Secret references and the Vault/OpenBao, AWS and GCP backends against real local servers."""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass
from types import ModuleType

import pytest

from mistral_nbenv.errors import ConfigurationError, SecretBackendError
from mistral_nbenv.secrets.backends import (
    KNOWN_SCHEMES,
    SecretReference,
    is_reference,
    load_backend,
    parse_reference,
)
from tests.secret_servers import GcpSecretServer, MotoServer, OpenBaoServer, closed_port

KEY = "FakeTestKey0123456789abcdefGHIJK"  # a fake, committed on purpose


class FakeSecret:
    """Stand-in for ``secrets.SecretStr``."""

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value


@dataclass(frozen=True)
class Options:
    """Stand-in for ``settings.SecretsSettings``."""

    vault_url: str = ""
    vault_token: FakeSecret | None = None
    vault_namespace: str = ""
    aws_region: str = ""
    aws_endpoint_url: str = ""
    gcp_emulator_host: str = ""


def no_env(name: str) -> str | None:
    return None


def fetch(raw: str, options: Options, getenv=no_env) -> str:
    ref = parse_reference(raw)
    return str(load_backend(ref.scheme).fetch(ref, options, getenv))


def assert_no_leak(exc: BaseException, *values: str) -> None:
    """Neither the error nor anything chained to it shows a secret value."""
    seen: BaseException | None = exc
    while seen is not None:
        for value in values:
            assert value not in str(seen)
            assert value not in repr(seen)
            assert value not in repr(getattr(seen, "__dict__", {}))
        seen = seen.__cause__ or seen.__context__


# ----------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("raw", "scheme", "path", "field"),
    [
        ("env:MISTRAL_API_KEY_PROD", "env", "MISTRAL_API_KEY_PROD", None),
        ("vault:secret/mistral/prod#api_key", "vault", "secret/mistral/prod", "api_key"),
        ("vault:kv/teams/ml/mistral#key", "vault", "kv/teams/ml/mistral", "key"),
        ("  VAULT:/secret/mistral/#api_key ", "vault", "secret/mistral", "api_key"),
        ("aws-sm:prod/mistral", "aws-sm", "prod/mistral", None),
        ("aws-sm:prod/mistral#key", "aws-sm", "prod/mistral", "key"),
        (
            "aws-sm:arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod-AbCdEf#key",
            "aws-sm",
            "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod-AbCdEf",
            "key",
        ),
        (
            "gcp-sm:projects/p/secrets/s/versions/latest",
            "gcp-sm",
            "projects/p/secrets/s/versions/latest",
            None,
        ),
        (
            "gcp-sm:projects/my-proj/secrets/mistral-prod/versions/3",
            "gcp-sm",
            "projects/my-proj/secrets/mistral-prod/versions/3",
            None,
        ),
    ],
)
def test_parse_reference(raw: str, scheme: str, path: str, field: str | None) -> None:
    ref = parse_reference(raw)
    assert (ref.scheme, ref.path, ref.field) == (scheme, path, field)
    assert ref.raw == raw.strip()
    assert str(ref) == raw.strip()
    assert is_reference(raw)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("vault:", "path after the scheme is empty"),
        ("vault:#api_key", "path after the scheme is empty"),
        ("vault:secret#api_key", "MOUNT/PATH"),
        ("vault:secret/mistral/prod", "needs '#FIELD'"),
        ("vault:secret/mistral/prod#", "field after '#' is empty"),
        ("vault:secret//prod#k", "MOUNT/PATH"),
        ("aws-sm:", "path after the scheme is empty"),
        ("aws-sm:#key", "path after the scheme is empty"),
        ("aws-sm:prod/mistral#", "field after '#' is empty"),
        ("gcp-sm:projects/p/secrets/s", "projects/P/secrets/S/versions/V"),
        ("gcp-sm:p/secrets/s/versions/1", "projects/P/secrets/S/versions/V"),
        ("gcp-sm:projects/p/secrets/s/versions/1#f", "no '#FIELD'"),
        ("env:", "path after the scheme is empty"),
        ("env:1BAD", "not an environment variable name"),
        ("env:NAME#x", "not '#FIELD'"),
        ("no scheme here", "no 'scheme:' prefix"),
    ],
)
def test_malformed_reference(raw: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match="malformed secret reference") as caught:
        parse_reference(raw)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("raw", ["azure-kv:vault/secret", "sops:file.yaml#key", "Http:x"])
def test_unknown_scheme_lists_known_schemes(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown secret reference scheme") as caught:
        parse_reference(raw)
    message = str(caught.value)
    for scheme in KNOWN_SCHEMES:
        assert f"{scheme}:" in message
    assert raw.partition(":")[2] not in message  # the rest of the value is not echoed


@pytest.mark.parametrize(
    ("value", "expected"),
    [(KEY, False), ("vault:secret/x#y", True), ("", False), ("  env:X", True), ("a b:c", False)],
)
def test_is_reference(value: str, expected: bool) -> None:
    assert is_reference(value) is expected


def test_reference_is_frozen() -> None:
    ref = SecretReference("vault", "secret/x", "f", "vault:secret/x#f")
    with pytest.raises(AttributeError):
        ref.path = "other"  # type: ignore[misc]


@pytest.mark.parametrize("scheme", ["env", "azure-kv"])
def test_load_backend_refuses_non_backends(scheme: str) -> None:
    with pytest.raises(ConfigurationError):
        load_backend(scheme)


@pytest.mark.parametrize(
    ("scheme", "module", "missing", "extra"),
    [
        ("vault", "vault", "hvac", "vault"),
        ("aws-sm", "aws", "boto3", "aws"),
        ("aws-sm", "aws", "botocore", "aws"),
        ("gcp-sm", "gcp", "google.cloud.secretmanager", "gcp"),
    ],
)
def test_missing_optional_dependency(
    monkeypatch: pytest.MonkeyPatch, scheme: str, module: str, missing: str, extra: str
) -> None:
    backend = load_backend(scheme)
    monkeypatch.setitem(sys.modules, missing, None)
    hint = f'pip install "mistral-nbenv[{extra}]"'
    with pytest.raises(SecretBackendError, match=r"pip install \"mistral-nbenv") as caught:
        load_backend(scheme)
    assert hint in str(caught.value)
    assert isinstance(caught.value.__cause__, ImportError)
    # Calling the backend directly gives the same error, before any traffic.
    ref = {
        "vault": "vault:secret/x#k",
        "aws-sm": "aws-sm:x",
        "gcp-sm": "gcp-sm:projects/p/secrets/s/versions/1",
    }[scheme]
    with pytest.raises(SecretBackendError) as direct:
        backend.fetch(parse_reference(ref), Options(), no_env)
    assert hint in str(direct.value)
    assert isinstance(backend, ModuleType)
    assert backend.__name__ == f"mistral_nbenv.secrets.backends.{module}"


def test_backends_import_no_third_party_library() -> None:
    code = (
        "import sys, mistral_nbenv, mistral_nbenv.secrets.backends, "
        "mistral_nbenv.secrets.backends.vault, mistral_nbenv.secrets.backends.aws, "
        "mistral_nbenv.secrets.backends.gcp, mistral_nbenv.secrets.scan\n"
        "heavy = [m for m in ('hvac', 'boto3', 'botocore', 'google.cloud', 'requests') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------- Vault / OpenBao


def vault_env(server: OpenBaoServer, **overrides: str) -> dict[str, str]:
    return {"VAULT_ADDR": server.url, "VAULT_TOKEN": server.token, **overrides}


def test_vault_reads_field_with_env_variables(openbao_server: OpenBaoServer) -> None:
    openbao_server.write("mistral/prod", {"api_key": KEY, "other": "x"})
    env = vault_env(openbao_server)
    assert fetch("vault:secret/mistral/prod#api_key", Options(), env.get) == KEY
    assert openbao_server.read_count("mistral/prod") == 1


def test_vault_settings_beat_variables(openbao_server: OpenBaoServer) -> None:
    openbao_server.write("mistral/staging", {"api_key": f"  {KEY}\n"})
    options = Options(vault_url=openbao_server.url, vault_token=FakeSecret(openbao_server.token))
    env = {"VAULT_ADDR": f"http://127.0.0.1:{closed_port()}", "VAULT_TOKEN": "wrong"}
    assert fetch("vault:secret/mistral/staging#api_key", options, env.get) == KEY


def test_vault_ignores_process_environment_not_given_through_getenv(
    openbao_server: OpenBaoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VAULT_ADDR", openbao_server.url)
    monkeypatch.setenv("VAULT_TOKEN", openbao_server.token)
    openbao_server.write("mistral/prod", {"api_key": KEY})
    with pytest.raises(SecretBackendError, match="no Vault address"):
        fetch("vault:secret/mistral/prod#api_key", Options(), no_env)
    only_addr = {"VAULT_ADDR": openbao_server.url}
    with pytest.raises(SecretBackendError, match="no Vault token"):
        fetch("vault:secret/mistral/prod#api_key", Options(), only_addr.get)
    assert openbao_server.read_count() == 0


def test_vault_counts_each_read(openbao_server: OpenBaoServer) -> None:
    openbao_server.write("a/b", {"k": KEY})
    env = vault_env(openbao_server)
    for _ in range(3):
        fetch("vault:secret/a/b#k", Options(), env.get)
    assert openbao_server.read_count("a/b") == 3
    assert openbao_server.read_count("other") == 0


@pytest.mark.parametrize(
    ("stored", "raw", "fragments"),
    [
        (None, "vault:secret/mistral/missing#api_key", ["no secret found", "'mistral/missing'"]),
        ({"api_key": KEY}, "vault:secret/mistral/prod#apikey", ["no field 'apikey'", "api_key"]),
        ({"api_key": "  "}, "vault:secret/mistral/prod#api_key", ["is empty"]),
        ({"api_key": 12345}, "vault:secret/mistral/prod#api_key", ["not a string"]),
        ({"api_key": KEY}, "vault:nomount/mistral/prod#api_key", ["no secret found"]),
    ],
)
def test_vault_errors(
    openbao_server: OpenBaoServer, stored: dict | None, raw: str, fragments: list[str]
) -> None:
    if stored is not None:
        openbao_server.write("mistral/prod", stored)
    with pytest.raises(SecretBackendError) as caught:
        fetch(raw, Options(), vault_env(openbao_server).get)
    error = caught.value
    assert error.backend == "vault"
    assert error.reference == raw
    assert raw in str(error)
    for fragment in fragments:
        assert fragment in str(error)
    assert_no_leak(error, KEY)


def test_vault_deleted_latest_version_is_missing(openbao_server: OpenBaoServer) -> None:
    openbao_server.write("mistral/prod", {"api_key": KEY})
    openbao_server.delete_latest("mistral/prod")
    with pytest.raises(SecretBackendError, match="no secret found"):
        fetch("vault:secret/mistral/prod#api_key", Options(), vault_env(openbao_server).get)


@pytest.mark.parametrize("token", ["not-a-token", "restricted"])
def test_vault_permission_denied(openbao_server: OpenBaoServer, token: str) -> None:
    openbao_server.write("mistral/prod", {"api_key": KEY})
    if token == "restricted":
        token = openbao_server.create_token(["default"])
    env = vault_env(openbao_server, VAULT_TOKEN=token)
    with pytest.raises(SecretBackendError, match="permission denied") as caught:
        fetch("vault:secret/mistral/prod#api_key", Options(), env.get)
    assert "VAULT_TOKEN" in str(caught.value)
    assert caught.value.__cause__ is not None
    assert token not in str(caught.value)
    assert_no_leak(caught.value, KEY)


@pytest.mark.parametrize("via", ["settings", "variable"])
def test_vault_namespace(openbao_server: OpenBaoServer, via: str) -> None:
    namespace = openbao_server.create_namespace(f"team{uuid.uuid4().hex[:8]}")
    openbao_server.write("mistral/prod", {"api_key": KEY}, namespace=namespace)
    raw = "vault:secret/mistral/prod#api_key"
    env = vault_env(openbao_server)
    with pytest.raises(SecretBackendError, match="no secret found"):
        fetch(raw, Options(), env.get)  # root namespace: not there
    if via == "settings":
        assert fetch(raw, Options(vault_namespace=namespace), env.get) == KEY
    else:
        assert fetch(raw, Options(), {**env, "VAULT_NAMESPACE": namespace}.get) == KEY


def test_vault_store_down() -> None:
    env = {"VAULT_ADDR": f"http://127.0.0.1:{closed_port()}", "VAULT_TOKEN": "t"}
    with pytest.raises(SecretBackendError, match="cannot reach Vault") as caught:
        fetch("vault:secret/mistral/prod#api_key", Options(), env.get)
    assert "VAULT_ADDR / secrets.vault_url" in str(caught.value)
    assert caught.value.__cause__ is not None


def test_vault_server_can_be_stopped_and_comes_back(openbao_server: OpenBaoServer) -> None:
    openbao_server.write("x/y", {"k": KEY})
    env = vault_env(openbao_server)
    openbao_server.stop()
    with pytest.raises(SecretBackendError, match="cannot reach Vault"):
        fetch("vault:secret/x/y#k", Options(), env.get)
    openbao_server.ensure_running()  # what the next test's fixture does
    openbao_server.write("x/y", {"k": KEY})
    assert fetch("vault:secret/x/y#k", Options(), vault_env(openbao_server).get) == KEY


# ----------------------------------------------------------------- AWS Secrets Manager


def aws_options(server: MotoServer) -> Options:
    return Options(aws_region=server.region, aws_endpoint_url=server.url)


@pytest.mark.parametrize(
    ("stored", "raw"),
    [
        (KEY, "aws-sm:prod/mistral"),
        (f"{KEY}\n", "aws-sm:prod/mistral"),
        (f'{{"key": "{KEY}", "other": "x"}}', "aws-sm:prod/mistral#key"),
        (f'{{"api key": "{KEY}"}}', "aws-sm:prod/mistral#api key"),
    ],
)
def test_aws_reads_secret(moto_server: MotoServer, stored: str, raw: str) -> None:
    moto_server.create_secret("prod/mistral", stored)
    assert fetch(raw, aws_options(moto_server)) == KEY
    assert moto_server.request_count("GetSecretValue") == 1


def test_aws_reads_by_arn_and_binary(moto_server: MotoServer) -> None:
    arn = moto_server.create_secret("bin/mistral", binary=KEY.encode())
    assert fetch(f"aws-sm:{arn}", aws_options(moto_server)) == KEY


def test_aws_uses_boto3_resolution_when_settings_are_empty(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_server.url)
    moto_server.create_secret("prod/mistral", KEY)
    assert fetch("aws-sm:prod/mistral", Options()) == KEY


def test_aws_counts_each_read(moto_server: MotoServer) -> None:
    moto_server.create_secret("s", KEY)
    for _ in range(3):
        fetch("aws-sm:s", aws_options(moto_server))
    assert moto_server.request_count("GetSecretValue") == 3


@pytest.mark.parametrize(
    ("stored", "raw", "fragments"),
    [
        (None, "aws-sm:prod/missing", ["no secret 'prod/missing'"]),
        (f'{{"key": "{KEY}"}}', "aws-sm:prod/mistral", ["JSON object (fields: key)", "#FIELD"]),
        (f'{{"key": "{KEY}"}}', "aws-sm:prod/mistral#nope", ["no JSON field 'nope'", "key"]),
        (KEY, "aws-sm:prod/mistral#key", ["not JSON"]),
        (f'["{KEY}"]', "aws-sm:prod/mistral#key", ["not a JSON object"]),
        ('{"key": 5}', "aws-sm:prod/mistral#key", ["not a string"]),
        ('{"key": ""}', "aws-sm:prod/mistral#key", ["empty"]),
        ("   ", "aws-sm:prod/mistral", ["empty"]),
    ],
)
def test_aws_errors(
    moto_server: MotoServer, stored: str | None, raw: str, fragments: list[str]
) -> None:
    if stored is not None:
        moto_server.create_secret("prod/mistral", stored)
    with pytest.raises(SecretBackendError) as caught:
        fetch(raw, aws_options(moto_server))
    error = caught.value
    assert (error.backend, error.reference) == ("aws-sm", raw)
    for fragment in fragments:
        assert fragment in str(error)
    assert_no_leak(error, KEY)


def test_aws_decode_errors_are_not_chained(moto_server: MotoServer) -> None:
    moto_server.create_secret("prod/mistral", f"not json {KEY}")
    with pytest.raises(SecretBackendError) as caught:
        fetch("aws-sm:prod/mistral#key", aws_options(moto_server))
    assert caught.value.__cause__ is None
    assert caught.value.__context__ is None


@pytest.mark.parametrize("who", ["unknown credentials", "user without policy"])
def test_aws_permission_denied(
    moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch, who: str
) -> None:
    moto_server.create_secret("prod/mistral", KEY)
    if who == "user without policy":
        key_id, secret = moto_server.iam_user_credentials()
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    moto_server.enforce_iam()
    with pytest.raises(SecretBackendError, match="permission denied") as caught:
        fetch("aws-sm:prod/mistral", aws_options(moto_server))
    assert "secretsmanager:GetSecretValue" in str(caught.value)
    assert caught.value.__cause__ is not None
    assert_no_leak(caught.value, KEY)


def test_aws_store_down(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from mistral_nbenv.secrets.backends import aws

    monkeypatch.setattr(aws, "MAX_ATTEMPTS", 1)  # no backoff wait in the test
    options = Options(aws_region="us-east-1", aws_endpoint_url=f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(SecretBackendError, match="cannot reach the service") as caught:
        fetch("aws-sm:prod/mistral", options)
    assert "secrets.aws_endpoint_url" in str(caught.value)
    assert caught.value.__cause__ is not None


def test_aws_no_region(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(SecretBackendError, match="no AWS region"):
        fetch("aws-sm:prod/mistral", Options(aws_endpoint_url=moto_server.url))
    assert moto_server.request_count("GetSecretValue") == 0


# ----------------------------------------------------------------- GCP Secret Manager


def gcp_options(server: GcpSecretServer) -> Options:
    return Options(gcp_emulator_host=server.host)


@pytest.mark.parametrize(
    ("versions", "raw"),
    [
        ({"1": "old", "2": KEY}, "gcp-sm:projects/p/secrets/mistral/versions/latest"),
        ({"1": KEY, "2": "new"}, "gcp-sm:projects/p/secrets/mistral/versions/1"),
        ({"3": f"{KEY}\n"}, "gcp-sm:projects/p/secrets/mistral/versions/3"),
    ],
)
def test_gcp_reads_secret(gcp_secret_server: GcpSecretServer, versions: dict, raw: str) -> None:
    for version, value in versions.items():
        gcp_secret_server.add("p", "mistral", version, value)
    assert fetch(raw, gcp_options(gcp_secret_server)) == KEY
    assert gcp_secret_server.access_count == 1


@pytest.mark.parametrize("form", ["{host}", "http://{host}"])
def test_gcp_emulator_host_from_variable(gcp_secret_server: GcpSecretServer, form: str) -> None:
    gcp_secret_server.add("p", "s", "1", KEY)
    env = {"SECRET_MANAGER_EMULATOR_HOST": form.format(host=gcp_secret_server.host)}
    assert fetch("gcp-sm:projects/p/secrets/s/versions/1", Options(), env.get) == KEY


@pytest.mark.parametrize(
    ("setup", "raw", "fragments"),
    [
        ("none", "gcp-sm:projects/p/secrets/missing/versions/latest", ["no such secret version"]),
        ("value", "gcp-sm:projects/p/secrets/mistral/versions/9", ["no such secret version"]),
        ("deny", "gcp-sm:projects/p/secrets/mistral/versions/1", ["permission denied"]),
        ("empty", "gcp-sm:projects/p/secrets/mistral/versions/1", ["payload is empty"]),
        ("binary", "gcp-sm:projects/p/secrets/mistral/versions/1", ["not UTF-8"]),
        ("400", "gcp-sm:projects/p/secrets/mistral/versions/1", ["BadRequest", "scripted"]),
    ],
)
def test_gcp_errors(
    gcp_secret_server: GcpSecretServer, setup: str, raw: str, fragments: list[str]
) -> None:
    value: str | bytes = {"empty": "", "binary": b"\xff\xfe" + KEY.encode()}.get(setup, KEY)
    gcp_secret_server.add("p", "mistral", "1", value)
    if setup == "deny":
        gcp_secret_server.deny("p", "mistral")
    if setup == "400":
        gcp_secret_server.fail_next(400)
    with pytest.raises(SecretBackendError) as caught:
        fetch(raw, gcp_options(gcp_secret_server))
    error = caught.value
    assert (error.backend, error.reference) == ("gcp-sm", raw)
    for fragment in fragments:
        assert fragment in str(error)
    if setup in ("binary",):
        assert error.__cause__ is None
        assert error.__context__ is None
    elif setup != "empty":
        assert error.__cause__ is not None
    assert_no_leak(error, KEY)


def test_gcp_retries_unavailable_briefly(gcp_secret_server: GcpSecretServer) -> None:
    gcp_secret_server.add("p", "s", "1", KEY)
    gcp_secret_server.fail_next(503, times=2)
    assert fetch("gcp-sm:projects/p/secrets/s/versions/1", gcp_options(gcp_secret_server)) == KEY
    assert gcp_secret_server.access_count == 3


def test_gcp_gives_up_on_persistent_unavailability(
    gcp_secret_server: GcpSecretServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mistral_nbenv.secrets.backends import gcp

    monkeypatch.setattr(gcp, "RETRY_DEADLINE_SECONDS", 0.5)
    gcp_secret_server.fail_next(503, times=1000)
    with pytest.raises(SecretBackendError, match="kept failing"):
        fetch("gcp-sm:projects/p/secrets/s/versions/1", gcp_options(gcp_secret_server))
    assert 1 < gcp_secret_server.access_count < 20


def test_gcp_store_down() -> None:
    options = Options(gcp_emulator_host=f"127.0.0.1:{closed_port()}")
    with pytest.raises(SecretBackendError, match="cannot reach the service") as caught:
        fetch("gcp-sm:projects/p/secrets/s/versions/1", options)
    assert caught.value.__cause__ is not None


def test_gcp_without_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    # An explicit credentials file that does not exist fails before any network access.
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(SecretBackendError, match="no Google credentials") as caught:
        fetch("gcp-sm:projects/p/secrets/s/versions/1", Options())
    assert "gcloud auth application-default login" in str(caught.value)
