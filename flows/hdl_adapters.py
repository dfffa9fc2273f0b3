"""Look-up of a node's HDL adapter, with every adapter module imported (so registered).

Why a module of its own: the registry and the adapters' shared helpers (flows/hdl_nodes.py) must
not import the adapters that import them; this module sits above both and is what the stitcher
and the build steps ask.
"""

from __future__ import annotations

from flows import hdl_bin_mvau, hdl_finn, hdl_max_pool  # noqa: F401 - importing an adapter module registers it
from flows.hdl_nodes import REGISTRY, NodeHdl, UnsupportedLayerError


def supported_op_types() -> list[str]:
    return sorted(REGISTRY)


def require_supported(model) -> None:
    """Raise :class:`UnsupportedLayerError` for the first node whose op type has no adapter."""
    for node in model.graph.node:
        if node.op_type not in REGISTRY:
            raise UnsupportedLayerError(
                f"unsupported layer {node.name} ({node.op_type}): no RTL adapter; supported op "
                f"types are {', '.join(supported_op_types())}"
            )


def node_hdl(node, model) -> NodeHdl:
    """The adapter's description of ``node``; raises for node types without RTL."""
    fn = REGISTRY.get(node.op_type)
    if fn is None:
        raise UnsupportedLayerError(
            f"unsupported layer {node.name} ({node.op_type}): no RTL adapter; supported op types "
            f"are {', '.join(supported_op_types())}"
        )
    return fn(node, model)
