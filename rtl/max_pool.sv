// max_pool: per-lane maximum over K consecutive stream words, FINN Pool with Function=MaxPool.
//
// Why it exists: FINN's Pool layer is HLS-only and Vitis HLS is not available here.
// It sits behind FINN's depthwise ConvolutionInputGenerator (SWG), whose stream is laid out as
// (OFM_H, OFM_W, C/PE, K_H, K_W, PE): every K = K_H*K_W consecutive words belong to one window
// and one group of PE channels, so the module needs no knowledge of image sizes or channel
// folding; the C/PE groups simply follow each other.
//
// in0_V:  element p of a word at bits [p*W +: W], two's complement if SIGNED.
// out0_V: one word per K input words, lane p = max over the window of lane p; same layout.
//         Both widths are PE*W rounded up to a multiple of 8 (FINN's AXI-stream padding, the
//         output padding is zero).
// Throughput: one input word per clock. Only the last word of a window needs room in the
// output register, so backpressure on out0_V stalls the input just at window boundaries.
module max_pool #(
    parameter int PE = 1,
    parameter int W = 8,
    parameter int K = 4,
    parameter bit SIGNED = 0,
    localparam int WIDTH = (PE * W + 7) / 8 * 8
) (
    input logic ap_clk,
    input logic ap_rst_n,

    input  logic [WIDTH-1:0] in0_V_TDATA,
    input  logic             in0_V_TVALID,
    output logic             in0_V_TREADY,

    output logic [WIDTH-1:0] out0_V_TDATA,
    output logic             out0_V_TVALID,
    input  logic             out0_V_TREADY
);
  localparam int CW = (K > 1) ? $clog2(K) : 1;

  logic [CW-1:0] kcnt;  // position of the current word inside its window
  logic [PE-1:0][W-1:0] acc, nxt;  // running maxima, and with the current word merged in
  logic first, last, fire;

  function automatic logic greater(input logic [W-1:0] a, input logic [W-1:0] b);
    return SIGNED ? ($signed(a) > $signed(b)) : (a > b);
  endfunction

  assign first = (kcnt == '0);
  assign last = (kcnt == CW'(K - 1));

  always_comb begin
    for (int p = 0; p < PE; p++) begin
      nxt[p] = in0_V_TDATA[p*W+:W];
      if (!first && !greater(nxt[p], acc[p])) nxt[p] = acc[p];
    end
  end

  assign in0_V_TREADY = ap_rst_n && (!last || !out0_V_TVALID || out0_V_TREADY);
  assign fire = in0_V_TVALID && in0_V_TREADY;

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n) begin
      kcnt <= '0;
      out0_V_TVALID <= 1'b0;
      out0_V_TDATA <= '0;
    end else begin
      if (out0_V_TREADY) out0_V_TVALID <= 1'b0;
      if (fire) begin
        acc <= nxt;
        kcnt <= last ? '0 : kcnt + 1'b1;
        if (last) begin
          out0_V_TVALID <= 1'b1;
          out0_V_TDATA <= WIDTH'(nxt);
        end
      end
    end
  end

  if (WIDTH > PE * W) begin : gen_ipad
    logic unused_ipad;
    assign unused_ipad = ^in0_V_TDATA[WIDTH-1:PE*W];
  end
endmodule
