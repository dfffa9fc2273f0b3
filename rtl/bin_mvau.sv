// bin_mvau: matrix-vector(-threshold) unit for 1-bit (bipolar) weights, FINN-compatible streams.
//
// Why it exists: FINN implements binarized MVAUs (1-bit weights, binaryXnorMode) only in HLS and
// Vitis HLS is not available here, so this is the project's own RTL with FINN's folding, stream
// interface and weight-memory layout.  Bit-exact reference: flows/custom_ops/bin_mvau_model.py.
//
// Function, per image (input vector x of MW elements, output vector of MH elements):
//   acc[r] = sum_c w[r][c] * x[c]   with w in {-1,+1} (stored bit 1 = +1, 0 = -1)
//     IBITS == 1: x is bipolar (bit 1 = +1, 0 = -1), XNOR + popcount datapath.
//                 XNOR_POPCOUNT=1: acc = popcount = #(w == x)   (FINN binaryXnorMode semantics)
//                 XNOR_POPCOUNT=0: acc = 2*popcount - MW        (the true bipolar dot product)
//     IBITS  > 1: x is an integer (SIGNED_IN selects two's complement or unsigned), acc = +-x sum.
//   acc is kept in ACCU_WIDTH-bit two's complement (wraps like the golden model if too narrow).
//   NO_ACT=1: out[r] = acc[r]                    (element width ACCU_WIDTH)
//   NO_ACT=0: out[r] = #{k : acc[r] >= T[r][k]} + ACT_VAL, truncated to OBITS bits
//             (FINN MultiThreshold semantics; a bipolar output is NT=1, OBITS=1, ACT_VAL=0:
//              bit 1 = +1, 0 = -1).
//
// Streams (AXI-stream, FINN names): in0_V carries MW/SIMD words per image, element s of a word at
// bits [s*IBITS +: IBITS]; out0_V carries MH/PE words per image, element pe at
// [pe*OELEM +: OELEM]; both widths padded to a multiple of 8 with zeros (FINN's rule).
// Iteration: for nf in 0..MH/PE-1, for sf in 0..MW/SIMD-1 one PExSIMD block per clock; the input
// vector is taken from the stream during nf == 0 and replayed from an input buffer afterwards,
// so cycles/image = MH/PE * MW/SIMD plus a 4-cycle pipeline latency.
//
// Memories (for fault injection, plain unpacked arrays `Mem`):
//   <inst>.wmem.Mem[t], t = nf*(MW/SIMD) + sf, width PE*SIMD: bit (pe*SIMD + s) = weight of
//     output row nf*PE+pe, input column sf*SIMD+s (FINN memstream layout, 1 bit per weight).
//   <inst>.tmem.Mem[nf] (NO_ACT=0 only), width PE*NT*ACCU_WIDTH: bits
//     [(pe*NT + k)*ACCU_WIDTH +: ACCU_WIDTH] = threshold k of output row nf*PE+pe (two's compl.).
module bin_mvau #(
    parameter int MW = 64,
    parameter int MH = 32,
    parameter int PE = 4,
    parameter int SIMD = 8,
    parameter int IBITS = 1,
    parameter bit SIGNED_IN = 0,
    parameter bit XNOR_POPCOUNT = 0,
    parameter int ACCU_WIDTH = 16,
    parameter bit NO_ACT = 1,
    parameter int NT = 1,
    parameter int OBITS = 1,
    parameter int ACT_VAL = 0,
    parameter WEIGHT_FILE = "",
    parameter THRESH_FILE = "",
    parameter bit RUNTIME_WRITEABLE = 0,  // AXI-lite access to wmem (FINN address map)
    localparam int OELEM = NO_ACT ? ACCU_WIDTH : OBITS,
    localparam int IN_WIDTH = (SIMD * IBITS + 7) / 8 * 8,
    localparam int OUT_WIDTH = (PE * OELEM + 7) / 8 * 8,
    localparam int WDEPTH = (MW / SIMD) * (MH / PE),
    localparam int WFOLD = (PE * SIMD + 31) / 32,
    localparam int AXIL_AW0 = ((WDEPTH > 1) ? $clog2(WDEPTH) : 0) + ((WFOLD > 1) ? $clog2(WFOLD) : 0) + 2,
    localparam int AXIL_AW = (AXIL_AW0 < 3) ? 3 : AXIL_AW0
) (
    input logic ap_clk,
    input logic ap_rst_n,

    input  logic [IN_WIDTH-1:0] in0_V_TDATA,
    input  logic                in0_V_TVALID,
    output logic                in0_V_TREADY,

    output logic [OUT_WIDTH-1:0] out0_V_TDATA,
    output logic                 out0_V_TVALID,
    input  logic                 out0_V_TREADY,

    // AXI-lite to the weight memory (only with RUNTIME_WRITEABLE=1; otherwise never ready)
    input  logic               s_axilite_AWVALID,
    output logic               s_axilite_AWREADY,
    input  logic [AXIL_AW-1:0] s_axilite_AWADDR,
    input  logic               s_axilite_WVALID,
    output logic               s_axilite_WREADY,
    input  logic [       31:0] s_axilite_WDATA,
    output logic               s_axilite_BVALID,
    input  logic               s_axilite_BREADY,
    output logic [        1:0] s_axilite_BRESP,
    input  logic               s_axilite_ARVALID,
    output logic               s_axilite_ARREADY,
    input  logic [AXIL_AW-1:0] s_axilite_ARADDR,
    output logic               s_axilite_RVALID,
    input  logic               s_axilite_RREADY,
    output logic [       31:0] s_axilite_RDATA,
    output logic [        1:0] s_axilite_RRESP
);
  localparam int SF = MW / SIMD;  // input folds
  localparam int NF = MH / PE;  // output folds
  localparam int DEPTH = WDEPTH;
  localparam int SFW = (SF > 1) ? $clog2(SF) : 1;
  localparam int NFW = (NF > 1) ? $clog2(NF) : 1;
  localparam int AW = (DEPTH > 1) ? $clog2(DEPTH) : 1;
  localparam int XW = SIMD * IBITS;
  localparam int TW = PE * NT * ACCU_WIDTH;
  localparam int CW = $clog2(NT + 1) + 1;

  initial begin
    if (MW % SIMD != 0 || MH % PE != 0) $error("bin_mvau: MW%%SIMD and MH%%PE must be 0");
    if (ACCU_WIDTH <= IBITS) $error("bin_mvau: ACCU_WIDTH must exceed IBITS");
  end

  typedef logic signed [ACCU_WIDTH-1:0] acc_t;

  // ---- global stall: the whole pipeline advances unless the output register is held ----
  logic en;
  assign en = !out0_V_TVALID || out0_V_TREADY;

  // ---- S0: fold counters, input stream / input buffer ----
  logic [SFW-1:0] sf;
  logic [NFW-1:0] nf;
  logic [AW-1:0] t;
  logic first_fold, fire;
  logic [XW-1:0] ibuf[SF];
  logic [XW-1:0] x0;

  assign first_fold = (nf == '0);
  assign in0_V_TREADY = en && first_fold && ap_rst_n;  // accept nothing during reset
  assign fire = en && (!first_fold || in0_V_TVALID) && ap_rst_n;
  assign x0 = first_fold ? in0_V_TDATA[XW-1:0] : ibuf[sf];

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n) begin
      sf <= '0;
      nf <= '0;
      t  <= '0;
    end else if (fire) begin
      if (sf == SFW'(SF - 1)) begin
        sf <= '0;
        nf <= (nf == NFW'(NF - 1)) ? '0 : nf + 1'b1;
      end else begin
        sf <= sf + 1'b1;
      end
      t <= (t == AW'(DEPTH - 1)) ? '0 : t + 1'b1;
    end
  end

  always_ff @(posedge ap_clk) begin
    if (fire && first_fold) ibuf[sf] <= in0_V_TDATA[XW-1:0];
  end

  // ---- S1: weight word (synchronous read) + activation word ----
  logic [PE*SIMD-1:0] w1;
  logic wcfg_en, wcfg_we;
  logic [AW-1:0] wcfg_addr;
  logic [PE*SIMD-1:0] wcfg_wdata, wcfg_rdata;
  logic [XW-1:0] x1;
  logic s1_v, s1_first, s1_last;
  logic [NFW-1:0] s1_nf;

  param_mem #(
      .WIDTH(PE * SIMD),
      .DEPTH(DEPTH),
      .INIT_FILE(WEIGHT_FILE)
  ) wmem (
      .clk(ap_clk),
      .rd_en(en),
      .rd_addr(t),
      .rd_data(w1),
      .cfg_en(wcfg_en),
      .cfg_we(wcfg_we),
      .cfg_addr(wcfg_addr),
      .cfg_wdata(wcfg_wdata),
      .cfg_rdata(wcfg_rdata)
  );

  if (RUNTIME_WRITEABLE) begin : gen_axil
    axil_mem_port #(
        .WIDTH(PE * SIMD),
        .DEPTH(DEPTH)
    ) axil (
        .clk(ap_clk),
        .rst_n(ap_rst_n),
        .s_axilite_AWVALID,
        .s_axilite_AWREADY,
        .s_axilite_AWADDR,
        .s_axilite_WVALID,
        .s_axilite_WREADY,
        .s_axilite_WDATA,
        .s_axilite_BVALID,
        .s_axilite_BREADY,
        .s_axilite_BRESP,
        .s_axilite_ARVALID,
        .s_axilite_ARREADY,
        .s_axilite_ARADDR,
        .s_axilite_RVALID,
        .s_axilite_RREADY,
        .s_axilite_RDATA,
        .s_axilite_RRESP,
        .cfg_en(wcfg_en),
        .cfg_we(wcfg_we),
        .cfg_addr(wcfg_addr),
        .cfg_wdata(wcfg_wdata),
        .cfg_rdata(wcfg_rdata)
    );
  end else begin : gen_no_axil
    assign wcfg_en = 1'b0;
    assign wcfg_we = 1'b0;
    assign wcfg_addr = '0;
    assign wcfg_wdata = '0;
    assign s_axilite_AWREADY = 1'b0;
    assign s_axilite_WREADY = 1'b0;
    assign s_axilite_BVALID = 1'b0;
    assign s_axilite_BRESP = 2'b00;
    assign s_axilite_ARREADY = 1'b0;
    assign s_axilite_RVALID = 1'b0;
    assign s_axilite_RDATA = 32'd0;
    assign s_axilite_RRESP = 2'b00;
    logic unused_axil;
    assign unused_axil = ^{s_axilite_AWVALID, s_axilite_AWADDR, s_axilite_WVALID, s_axilite_WDATA,
                           s_axilite_BREADY, s_axilite_ARVALID, s_axilite_ARADDR,
                           s_axilite_RREADY, wcfg_rdata};
  end

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n) s1_v <= 1'b0;
    else if (en) s1_v <= fire;
    if (en) begin
      x1 <= x0;
      s1_first <= (sf == '0);
      s1_last <= (sf == SFW'(SF - 1));
      s1_nf <= nf;
    end
  end

  // ---- S2: per-PE partial sum of one SIMD block ----
  function automatic acc_t block_sum(input logic [SIMD-1:0] w, input logic [XW-1:0] x);
    acc_t sum, e;
    logic match;  // 1-bit on purpose: a cast would widen the XNOR operands
    sum = '0;
    for (int s = 0; s < SIMD; s++) begin
      if (IBITS == 1) begin
        // XNOR + popcount; the bipolar form subtracts the mismatches instead of counting 0s
        match = w[s] ~^ x[s];
        if (XNOR_POPCOUNT) sum += acc_t'(match);
        else sum += match ? acc_t'(1) : -acc_t'(1);
      end else begin
        if (SIGNED_IN) e = acc_t'($signed(x[s*IBITS+:IBITS]));
        else e = acc_t'($unsigned(x[s*IBITS+:IBITS]));
        sum += w[s] ? e : -e;
      end
    end
    return sum;
  endfunction

  acc_t part2[PE];
  logic s2_v, s2_first, s2_last;
  logic [NFW-1:0] s2_nf;

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n) s2_v <= 1'b0;
    else if (en) s2_v <= s1_v;
    if (en) begin
      for (int pe = 0; pe < PE; pe++) part2[pe] <= block_sum(w1[pe*SIMD+:SIMD], x1);
      s2_first <= s1_first;
      s2_last <= s1_last;
      s2_nf <= s1_nf;
    end
  end

  // ---- S3: accumulate over the SF input folds; threshold word read for this output fold ----
  acc_t acc3[PE];
  logic s3_v;
  logic [TW-1:0] thr3;

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n) s3_v <= 1'b0;
    else if (en) s3_v <= s2_v && s2_last;
    if (en && s2_v) begin
      for (int pe = 0; pe < PE; pe++) acc3[pe] <= (s2_first ? acc_t'(0) : acc3[pe]) + part2[pe];
    end
  end

  if (NO_ACT) begin : gen_noact
    assign thr3 = '0;
    logic unused_nf;
    assign unused_nf = ^s2_nf;
  end else begin : gen_thr
    param_mem #(
        .WIDTH(TW),
        .DEPTH(NF),
        .INIT_FILE(THRESH_FILE)
    ) tmem (
        .clk(ap_clk),
        .rd_en(en),
        .rd_addr(s2_nf),
        .rd_data(thr3),
        .cfg_en(1'b0),
        .cfg_we(1'b0),
        .cfg_addr('0),
        .cfg_wdata('0),
        .cfg_rdata(tcfg_rdata)
    );
    logic [TW-1:0] tcfg_rdata;  // thresholds are not runtime-writeable (yet)
    logic unused_tcfg;
    assign unused_tcfg = ^tcfg_rdata;
  end

  // ---- S4: activation (multi-threshold) and output register ----
  function automatic logic [OELEM-1:0] activate(input acc_t acc, input logic [NT*ACCU_WIDTH-1:0] thr);
    logic signed [CW-1:0] cnt;
    if (NO_ACT) return OELEM'(acc);
    cnt = '0;
    for (int k = 0; k < NT; k++) if (acc >= $signed(thr[k*ACCU_WIDTH+:ACCU_WIDTH])) cnt += 1'b1;
    return OELEM'(32'(cnt) + ACT_VAL);
  endfunction

  logic [PE*OELEM-1:0] out_d;

  always_ff @(posedge ap_clk) begin
    if (!ap_rst_n) out0_V_TVALID <= 1'b0;
    else if (en) out0_V_TVALID <= s3_v;
    if (en && s3_v) begin
      for (int pe = 0; pe < PE; pe++)
        out_d[pe*OELEM+:OELEM] <= activate(acc3[pe], thr3[pe*NT*ACCU_WIDTH+:NT*ACCU_WIDTH]);
    end
  end

  if (OUT_WIDTH > PE * OELEM) begin : gen_opad
    assign out0_V_TDATA = {{(OUT_WIDTH - PE * OELEM) {1'b0}}, out_d};
  end else begin : gen_onopad
    assign out0_V_TDATA = out_d;
  end

  if (IN_WIDTH > XW) begin : gen_ipad
    logic unused_ipad;
    assign unused_ipad = ^in0_V_TDATA[IN_WIDTH-1:XW];
  end
endmodule
