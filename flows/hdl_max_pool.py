"""HDL adapter of the project's ``MaxPoolRTL`` (rtl/max_pool.sv) for the stitcher.

Why a module of its own: FINN has pooling only as HLS, so the flow converts max-pool nodes to
``MaxPoolRTL`` (flows/custom_ops/convert_to_max_pool.py) and writes their HDL with
``MaxPoolRTL.generate_hdl``; this adapter tells the stitcher how to instantiate the generated
wrapper (module and instance named after the node). The layer has no memories, so it offers
no fault-injection targets and no AXI-lite port.
"""

from __future__ import annotations

from flows.hdl_nodes import NodeHdl, codegen_dir, custom_op, pad8, register_hdl, stream_pins


@register_hdl("MaxPoolRTL")
def max_pool(node, model) -> NodeHdl:
    """The wrapper written by ``MaxPoolRTL.generate_hdl`` (step ``generate_hdl``)."""
    inst = custom_op(node)
    name = node.name
    cg = codegen_dir(inst)
    if not (cg / f"{name}.v").exists():
        raise FileNotFoundError(f"{name}: no generated wrapper in {cg} (run generate_hdl first)")

    def instantiate(i: str, o: str, init_file: str | None = None,
                    axil_prefix: str | None = None) -> str:
        return (
            f"  {name} {name} (\n    .ap_clk(ap_clk), .ap_rst_n(ap_rst_n),\n"
            f"    {stream_pins('in0_V', i)},\n    {stream_pins('out0_V', o)}\n  );\n"
        )

    return NodeHdl(
        name=name, op_type=node.op_type,
        sources=[cg / f for f in inst.get_rtl_file_list()], lib_sources=[],
        in_width=pad8(inst.get_instream_width()), out_width=pad8(inst.get_outstream_width()),
        instantiate=instantiate,
    )
