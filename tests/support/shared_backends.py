"""Node configuration for shared-backend mode: the node's data directory
holds only its identity, its rows live on the backends given."""

from __future__ import annotations

import timpy
from tests.conftest import node_config
from timpy.config import ClusterConfig, StorageConfig
from timpy.store.backends import BackendSpec


def shared_config(data_dir, *specs: BackendSpec, cluster: ClusterConfig | None = None) -> timpy.NodeConfig:  # noqa: ANN001
    """A node on shared backends; ``data_dir`` holds only its identity."""
    return node_config(
        memory=False, data_dir=data_dir, storage=StorageConfig(backends=specs), **({"cluster": cluster} if cluster else {})
    )
