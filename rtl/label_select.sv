// label_select: top-1 (argmax) over LABELS integer scores, FINN LabelSelect with K=1.
//
// Why it exists: FINN's LabelSelect is HLS-only and Vitis HLS is not available here.
// Semantics follow FINN's Python execution (ONNX TopK, K=1): the index of the largest score,
// the SMALLEST index among equal maxima (elements are scanned in index order and only a
// strictly larger score replaces the current best).
//
// in0_V: LABELS/PE words per image, score p of word j (label j*PE + p) at bits
//        [p*IBITS +: IBITS], two's complement if SIGNED_IN; width padded to a multiple of 8.
// out0_V: one word per image holding the label index (OBITS bits, zero padded to 8*k bits).
// Throughput: one input word per clock; the output register is a 1-deep buffer.
module label_select #(
    parameter int LABELS = 10,
    parameter int PE = 1,
    parameter int IBITS = 16,
    parameter bit SIGNED_IN = 1,
    parameter int OBITS = (LABELS > 1) ? $clog2(LABELS) : 1,
    localparam int IN_WIDTH = (PE * IBITS + 7) / 8 * 8,
    localparam int OUT_WIDTH = (OBITS + 7) / 8 * 8
) (
    input logic ap_clk,
    input logic ap_rst_n,

    input  logic [IN_WIDTH-1:0] in0_V_TDATA,
    input  logic                in0_V_TVALID,
    output logic                in0_V_TREADY,

    output logic [OUT_WIDTH-1:0] out0_V_TDATA,
    output logic                 out0_V_TVALID,
    input  logic                 out0_V_TREADY
);
  localparam int NW = LABELS / PE;
  localparam int WW = (NW > 1) ? $clog2(NW) : 1;
  localparam int IW = (LABELS > 1) ? $clog2(LABELS) : 1;
  typedef logic signed [IBITS:0] score_t;  // one extra bit: unsigned scores compare as signed

  initial begin
    if (LABELS % PE != 0) $error("label_select: LABELS %% PE must be 0");
    if (OBITS < IW) $error("label_select: OBITS too small for LABELS");
  end

  logic [WW-1:0] wcnt;
  score_t best_v, word_v, cand_v;
  logic [IW-1:0] best_i, word_i, cand_i;
  logic fire, last;

  function automatic score_t elem(input logic [IN_WIDTH-1:0] d, input int p);
    logic [IBITS-1:0] e;
    e = d[p*IBITS+:IBITS];
    return SIGNED_IN ? score_t'($signed(e)) : score_t'({1'b0, e});
  endfunction

  // best of this word (lowest index wins ties), then merged with the running best
  always_comb begin
    word_v = elem(in0_V_TDATA, 0);
    word_i = IW'(32'(wcnt) * PE);
    for (int p = 1; p < PE; p++) begin
      if (elem(in0_V_TDATA, p) > word_v) begin
        word_v = elem(in0_V_TDATA, p);
        word_i = IW'(32'(wcnt) * PE + p);
      end
    end
    if (wcnt != '0 && !(word_v > best_v)) begin
      cand_v = best_v;
      cand_i = best_i;
    end else begin
      cand_v = word_v;
      cand_i = word_i;
    end
  end

  assign in0_V_TREADY = (!out0_V_TVALID || out0_V_TREADY) && ap_rst_n;  // none during reset
  assign fire = in0_V_TVALID && in0_V_TREADY;
  assign last = (wcnt == WW'(NW - 1));

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n) begin
      wcnt <= '0;
      out0_V_TVALID <= 1'b0;
    end else begin
      if (out0_V_TREADY) out0_V_TVALID <= 1'b0;
      if (fire) begin
        best_v <= cand_v;
        best_i <= cand_i;
        wcnt <= last ? '0 : wcnt + 1'b1;
        if (last) begin
          out0_V_TVALID <= 1'b1;
          out0_V_TDATA <= OUT_WIDTH'(cand_i);
        end
      end
    end
  end

  if (IN_WIDTH > PE * IBITS) begin : gen_ipad
    logic unused_ipad;
    assign unused_ipad = ^in0_V_TDATA[IN_WIDTH-1:PE*IBITS];
  end
endmodule
