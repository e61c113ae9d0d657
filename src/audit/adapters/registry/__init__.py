"""The registry adapter: observe what registries serve, with credentials from docker, ECR or a secret."""

from audit.adapters.registry.client import RegistryClient, RequestStats
from audit.adapters.registry.credentials import (
    ChainCredentials,
    Credential,
    CredentialProvider,
    DockerConfigCredentials,
    EcrCredentials,
    StaticCredentials,
)
from audit.adapters.registry.failures import RegistryRequestError
from audit.adapters.registry.manifest import MAX_MANIFEST_BYTES, Manifest
from audit.config import RegistrySettings

__all__ = [
    "MAX_MANIFEST_BYTES",
    "ChainCredentials",
    "Credential",
    "CredentialProvider",
    "DockerConfigCredentials",
    "EcrCredentials",
    "Manifest",
    "RegistryClient",
    "RegistryRequestError",
    "RegistrySettings",
    "RequestStats",
    "StaticCredentials",
]
