"""AWS Secrets Manager backend for ``aws-sm:SECRET_ID[#JSON_FIELD]`` references.

Region and endpoint come from ``secrets.aws_region`` / ``secrets.aws_endpoint_url``, else
boto3's own resolution (``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_SECRETS_MANAGER``,
profiles); credentials always come from boto3's usual chain.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mistral_nbenv.secrets.backends import (
    BackendOptions,
    SecretReference,
    backend_error,
    decode_utf8,
    import_dependency,
    json_or_none,
    key_field,
    key_text,
)

__all__ = ["CONNECT_TIMEOUT_SECONDS", "MAX_ATTEMPTS", "READ_TIMEOUT_SECONDS", "fetch"]

CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 10.0
#: Total attempts (first call included) for botocore's "standard" retry mode.
MAX_ATTEMPTS = 2
_LABEL = "AWS Secrets Manager"
_DENIED = {
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "InvalidSignatureException",
    "ExpiredTokenException",
    "SignatureDoesNotMatch",
}
_WHERE_HELP = (
    "Check AWS_DEFAULT_REGION / secrets.aws_region and "
    "AWS_ENDPOINT_URL_SECRETS_MANAGER / secrets.aws_endpoint_url."
)


def fetch(
    ref: SecretReference, options: BackendOptions, getenv: Callable[[str], str | None]
) -> str:
    """Return the secret string ``ref.path`` (or its JSON field ``ref.field``)."""
    boto3 = import_dependency("boto3", "aws-sm")
    import_dependency("botocore", "aws-sm")
    botocore_config = import_dependency("botocore.config", "aws-sm")
    botocore_exceptions = import_dependency("botocore.exceptions", "aws-sm")

    config = botocore_config.Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    )
    where = "region and endpoint not resolved"
    try:
        client = boto3.session.Session().client(
            "secretsmanager",
            region_name=options.aws_region.strip() or None,
            endpoint_url=options.aws_endpoint_url.strip() or None,
            config=config,
        )
        where = f"region {client.meta.region_name}, endpoint {client.meta.endpoint_url}"
        response = client.get_secret_value(SecretId=ref.path)
    except botocore_exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "")) or "Unknown"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "ResourceNotFoundException":
            raise backend_error(
                ref,
                _LABEL,
                f"no secret {ref.path!r} ({where})",
                "Check the secret id and the region. " + _WHERE_HELP,
            ) from exc
        if code in _DENIED or code == "DecryptionFailure" or status in (401, 403):
            raise backend_error(
                ref,
                _LABEL,
                f"permission denied: {code} ({where})",
                "Check the AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...) and that they "
                "allow secretsmanager:GetSecretValue (and kms:Decrypt) on this secret.",
            ) from exc
        raise backend_error(
            ref, _LABEL, f"the request failed: {code} ({where})", _WHERE_HELP
        ) from exc
    except botocore_exceptions.NoRegionError as exc:
        raise backend_error(
            ref,
            _LABEL,
            "no AWS region is configured",
            "Set AWS_DEFAULT_REGION or secrets.aws_region.",
        ) from exc
    except (
        botocore_exceptions.NoCredentialsError,
        botocore_exceptions.PartialCredentialsError,
        botocore_exceptions.ProfileNotFound,
    ) as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"no usable AWS credentials ({type(exc).__name__})",
            "Configure credentials as for the AWS CLI (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...).",
        ) from exc
    except (
        botocore_exceptions.EndpointConnectionError,
        botocore_exceptions.ConnectTimeoutError,
        botocore_exceptions.ReadTimeoutError,
        botocore_exceptions.ConnectionClosedError,
    ) as exc:
        raise backend_error(
            ref, _LABEL, f"cannot reach the service ({where})", _WHERE_HELP
        ) from exc
    except botocore_exceptions.BotoCoreError as exc:
        raise backend_error(
            ref, _LABEL, f"the request failed: {type(exc).__name__} ({where})", _WHERE_HELP
        ) from exc
    return _value(ref, response)


def _value(ref: SecretReference, response: dict[str, Any]) -> str:
    secret = response.get("SecretString")
    if secret is None and response.get("SecretBinary") is not None:
        # Decoded without raising inside an except block: the error would hold the secret.
        secret = decode_utf8(bytes(response["SecretBinary"]))
        if secret is None:
            raise backend_error(
                ref, _LABEL, "the binary secret is not UTF-8 text", "Store the key as text."
            )
    if not isinstance(secret, str):
        raise backend_error(ref, _LABEL, "the secret has no value", "Store the API key in it.")

    parsed: object = None
    if secret.lstrip().startswith(("{", "[")) or ref.field is not None:
        is_json, parsed = json_or_none(secret)
        if not is_json and ref.field is not None:
            raise backend_error(
                ref,
                _LABEL,
                f"'#{ref.field}' was given but the secret is not JSON",
                "Drop '#FIELD' to use the whole secret string, or store a JSON object.",
            )
    if ref.field is None:
        if isinstance(parsed, dict):
            fields = ", ".join(sorted(map(str, parsed))) or "none"
            raise backend_error(
                ref,
                _LABEL,
                f"the secret is a JSON object (fields: {fields})",
                f"Name the field holding the key: aws-sm:{ref.path}#FIELD.",
            )
        return key_text(ref, _LABEL, secret, "the secret")
    if not isinstance(parsed, dict):
        raise backend_error(
            ref,
            _LABEL,
            f"'#{ref.field}' was given but the secret is not a JSON object",
            "Drop '#FIELD' to use the whole secret string, or store a JSON object.",
        )
    return key_field(ref, _LABEL, parsed, "JSON field")
