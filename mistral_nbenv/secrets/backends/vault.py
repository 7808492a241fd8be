"""HashiCorp Vault / OpenBao KV v2 backend for ``vault:MOUNT/PATH#FIELD`` references.

Address, token and namespace come from ``secrets.vault_url`` / ``vault_token`` /
``vault_namespace``, else ``VAULT_ADDR`` / ``VAULT_TOKEN`` / ``VAULT_NAMESPACE`` through the
given ``getenv``.  hvac is always handed explicit values, so it never falls back to its own
environment or ``~/.vault-token`` lookups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mistral_nbenv.secrets.backends import (
    BackendOptions,
    SecretReference,
    backend_error,
    import_dependency,
    key_field,
)

__all__ = ["TIMEOUT_SECONDS", "fetch"]

#: Seconds for connecting to and reading from Vault.
TIMEOUT_SECONDS = 10.0
_LABEL = "Vault/OpenBao"


def _settings(
    options: BackendOptions, getenv: Callable[[str], str | None]
) -> tuple[str, str, str | None]:
    url = (options.vault_url or getenv("VAULT_ADDR") or "").strip()
    secret_token = options.vault_token
    token = secret_token.get_secret_value() if secret_token is not None else ""
    token = (token or getenv("VAULT_TOKEN") or "").strip()
    namespace = (options.vault_namespace or getenv("VAULT_NAMESPACE") or "").strip()
    return url, token, namespace or None


def fetch(
    ref: SecretReference, options: BackendOptions, getenv: Callable[[str], str | None]
) -> str:
    """Read ``ref.field`` of the KV v2 secret ``ref.path`` (``MOUNT/PATH``) from Vault/OpenBao."""
    hvac = import_dependency("hvac", "vault")
    hvac_exceptions = import_dependency("hvac.exceptions", "vault")
    requests_exceptions = import_dependency("requests.exceptions", "vault")

    url, token, namespace = _settings(options, getenv)
    if not url:
        raise backend_error(
            ref, _LABEL, "no Vault address is configured", "Set VAULT_ADDR or secrets.vault_url."
        )
    if not token:
        raise backend_error(
            ref, _LABEL, "no Vault token is configured", "Set VAULT_TOKEN or secrets.vault_token."
        )
    mount, _, path = ref.path.strip("/").partition("/")
    where = f"KV v2 mount {mount!r}, path {path!r} at {url}"

    verify: bool | str = getenv("VAULT_CACERT") or getenv("VAULT_CAPATH") or True
    cert_file, key_file = getenv("VAULT_CLIENT_CERT"), getenv("VAULT_CLIENT_KEY")
    cert = (cert_file, key_file) if cert_file and key_file else None
    try:
        client = hvac.Client(
            url=url,
            token=token,
            namespace=namespace,
            verify=verify,
            cert=cert,
            timeout=TIMEOUT_SECONDS,
        )
        response = client.secrets.kv.v2.read_secret_version(
            path=path, mount_point=mount, raise_on_deleted_version=True
        )
    except (hvac_exceptions.Forbidden, hvac_exceptions.Unauthorized) as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"permission denied ({where})",
            "The token is invalid, expired or lacks a policy allowing read on "
            f"{mount}/data/{path}; check VAULT_TOKEN / secrets.vault_token"
            + (" and VAULT_NAMESPACE / secrets.vault_namespace." if namespace else "."),
        ) from exc
    except hvac_exceptions.InvalidPath as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"no secret found ({where})",
            "Check the path, that the mount is a KV version 2 engine and that the latest "
            "version is not deleted.",
        ) from exc
    except (hvac_exceptions.VaultDown, hvac_exceptions.InternalServerError) as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"the server is sealed or failing ({where})",
            "Ask the Vault operators, or retry later.",
        ) from exc
    except (requests_exceptions.ConnectionError, requests_exceptions.Timeout) as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"cannot reach Vault at {url} (connection failed or no answer in "
            f"{TIMEOUT_SECONDS:g} s)",
            "Check VAULT_ADDR / secrets.vault_url and that the server is running.",
        ) from exc
    except (hvac_exceptions.VaultError, requests_exceptions.RequestException) as exc:
        raise backend_error(
            ref,
            _LABEL,
            f"the request failed ({where}): {type(exc).__name__}",
            "Check the Vault settings (VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE).",
        ) from exc
    return _field(ref, response, where)


def _field(ref: SecretReference, response: Any, where: str) -> str:
    data = response.get("data", {}).get("data") if isinstance(response, dict) else None
    if not isinstance(data, dict):
        raise backend_error(
            ref, _LABEL, f"the answer holds no KV v2 data ({where})", "Is the mount KV version 2?"
        )
    return key_field(ref, _LABEL, data)
