"""Google Cloud Secret Manager backend for ``gcp-sm:projects/P/secrets/S/versions/V`` references.

Credentials come from Google's Application Default Credentials.  For tests and local
stand-ins, ``secrets.gcp_emulator_host`` (else the ``SECRET_MANAGER_EMULATOR_HOST``
variable, after Google's ``*_EMULATOR_HOST`` convention) gives a ``HOST:PORT`` spoken to in
plain HTTP REST with anonymous credentials.
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
    key_text,
)

__all__ = [
    "EMULATOR_HOST_VARIABLE",
    "RETRY_DEADLINE_SECONDS",
    "TIMEOUT_SECONDS",
    "emulator_endpoint",
    "fetch",
]

EMULATOR_HOST_VARIABLE = "SECRET_MANAGER_EMULATOR_HOST"
#: Seconds for one request.
TIMEOUT_SECONDS = 10.0
#: Seconds spent retrying 429/500/503 answers (the client's own default is 60).
RETRY_DEADLINE_SECONDS = 3.0
_LABEL = "GCP Secret Manager"


def emulator_endpoint(options: BackendOptions, getenv: Callable[[str], str | None]) -> str:
    """The ``http://HOST:PORT`` of a local stand-in, or ``""`` for Google's real service."""
    host = (options.gcp_emulator_host or getenv(EMULATOR_HOST_VARIABLE) or "").strip()
    if not host:
        return ""
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


def _client(endpoint: str) -> Any:
    secretmanager = import_dependency("google.cloud.secretmanager", "gcp-sm")
    if not endpoint:
        return secretmanager.SecretManagerServiceClient()
    auth_credentials = import_dependency("google.auth.credentials", "gcp-sm")
    return secretmanager.SecretManagerServiceClient(
        credentials=auth_credentials.AnonymousCredentials(),
        transport="rest",
        client_options={"api_endpoint": endpoint},
    )


def fetch(
    ref: SecretReference, options: BackendOptions, getenv: Callable[[str], str | None]
) -> str:
    """Return the payload of the secret version ``ref.path``, decoded as UTF-8."""
    exceptions = import_dependency("google.api_core.exceptions", "gcp-sm")
    retry = import_dependency("google.api_core.retry", "gcp-sm")
    auth_exceptions = import_dependency("google.auth.exceptions", "gcp-sm")
    requests_exceptions = import_dependency("requests.exceptions", "gcp-sm")

    endpoint = emulator_endpoint(options, getenv)
    where = f"stand-in at {endpoint}" if endpoint else "Google Cloud"
    policy = retry.Retry(
        predicate=retry.if_exception_type(
            exceptions.TooManyRequests,
            exceptions.InternalServerError,
            exceptions.ServiceUnavailable,
        ),
        initial=0.2,
        maximum=1.0,
        multiplier=2.0,
        timeout=RETRY_DEADLINE_SECONDS,
    )
    try:
        client = _client(endpoint)
        response = client.access_secret_version(
            name=ref.path, retry=policy, timeout=TIMEOUT_SECONDS
        )
    except exceptions.RetryError as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"the service kept failing for {RETRY_DEADLINE_SECONDS:g} s ({where})",
            "Retry later.",
        ) from exc
    except exceptions.NotFound as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"no such secret version ({where})",
            "Check the project, secret name and version in the reference.",
        ) from exc
    except (exceptions.Forbidden, exceptions.Unauthorized) as exc:
        # REST answers map by HTTP status: 403 Forbidden (PermissionDenied is its gRPC
        # subclass), 401 Unauthorized (likewise Unauthenticated).
        raise backend_error(
            ref,
            _LABEL,
            f"permission denied: {type(exc).__name__} ({where})",
            "Check the Application Default Credentials (gcloud auth application-default "
            "login, GOOGLE_APPLICATION_CREDENTIALS) and the role "
            "roles/secretmanager.secretAccessor on this secret.",
        ) from exc
    except exceptions.FailedPrecondition as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"the secret version is disabled or destroyed ({where})",
            "Enable it or reference another version.",
        ) from exc
    except auth_exceptions.DefaultCredentialsError as exc:
        raise backend_error(
            ref,
            _LABEL,
            "no Google credentials were found",
            "Run 'gcloud auth application-default login' or set GOOGLE_APPLICATION_CREDENTIALS"
            f" (or secrets.gcp_emulator_host / {EMULATOR_HOST_VARIABLE} for a local stand-in).",
        ) from exc
    except (
        requests_exceptions.ConnectionError,
        requests_exceptions.Timeout,
        exceptions.ServiceUnavailable,
        exceptions.DeadlineExceeded,
        auth_exceptions.TransportError,
    ) as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"cannot reach the service ({where})",
            f"Check the network, or secrets.gcp_emulator_host / {EMULATOR_HOST_VARIABLE}.",
        ) from exc
    except exceptions.GoogleAPICallError as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"the request failed: {type(exc).__name__}: {exc.message} ({where})",
            "Check the reference and that the secret version is enabled.",
        ) from exc
    except (exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"the request failed: {type(exc).__name__} ({where})",
            "Check the reference and the Google credentials.",
        ) from exc
    # Decoded without raising inside an except block: the error would hold the secret.
    text = decode_utf8(bytes(response.payload.data))
    if text is None:
        raise backend_error(ref, _LABEL, "the payload is not UTF-8 text", "Store the key as text.")
    return key_text(ref, _LABEL, text, "the payload")
