// axil_mem_port: AXI-lite slave giving runtime read/write access to a param_mem word array.
//
// Why: FINN's runtime_writeable_weights lets a host rewrite weight memories over AXI-lite; the
// fault-injection campaign can use the same path as a real board would. The address map is
// FINN's memstream one (finn-rtllib/axi/hdl/axilite.sv): a memory line of WIDTH bits spans
// FOLD = ceil(WIDTH/32) 32-bit words, padded to K = 2**ceil(log2(FOLD)) word slots;
// byte address = (line*K + i)*4, word i = line bits [32*i +: 32] (low word first).
// Writing word FOLD-1 commits the whole line (words 0..FOLD-2 are taken from earlier writes to
// the same line slots). Unlike FINN, every read fetches the addressed line, so any word can be
// read in any order. One transaction at a time; WSTRB and PROT are ignored; responses are OKAY.
module axil_mem_port #(
    parameter int WIDTH = 64,
    parameter int DEPTH = 16,
    localparam int FOLD = (WIDTH + 31) / 32,
    localparam int WSEL = (FOLD > 1) ? $clog2(FOLD) : 0,
    localparam int MAW = (DEPTH > 1) ? $clog2(DEPTH) : 1,
    localparam int AW0 = ((DEPTH > 1) ? $clog2(DEPTH) : 0) + WSEL + 2,
    localparam int ADDR_WIDTH = (AW0 < 3) ? 3 : AW0  // FINN's width, at least 3 bits
) (
    input logic clk,
    input logic rst_n,

    input  logic                  s_axilite_AWVALID,
    output logic                  s_axilite_AWREADY,
    input  logic [ADDR_WIDTH-1:0] s_axilite_AWADDR,
    input  logic                  s_axilite_WVALID,
    output logic                  s_axilite_WREADY,
    input  logic [          31:0] s_axilite_WDATA,
    output logic                  s_axilite_BVALID,
    input  logic                  s_axilite_BREADY,
    output logic [           1:0] s_axilite_BRESP,
    input  logic                  s_axilite_ARVALID,
    output logic                  s_axilite_ARREADY,
    input  logic [ADDR_WIDTH-1:0] s_axilite_ARADDR,
    output logic                  s_axilite_RVALID,
    input  logic                  s_axilite_RREADY,
    output logic [          31:0] s_axilite_RDATA,
    output logic [           1:0] s_axilite_RRESP,

    // memory side (second port of param_mem): one-cycle synchronous read
    output logic             cfg_en,
    output logic             cfg_we,
    output logic [  MAW-1:0] cfg_addr,
    output logic [WIDTH-1:0] cfg_wdata,
    input  logic [WIDTH-1:0] cfg_rdata
);
  localparam int LW = FOLD * 32;

  logic aw_v, w_v, ar_v, rd_wait;
  logic [ADDR_WIDTH-3:0] aw_a, ar_a;  // word addresses
  logic [31:0] w_d;
  logic [31:0] line[FOLD];
  /* verilator lint_off UNUSEDSIGNAL */  // padding bits above WIDTH of the last 32-bit word
  logic [LW-1:0] wline, rline;
  /* verilator lint_on UNUSEDSIGNAL */
  logic unused_bsel;  // byte offsets: accesses are whole 32-bit words
  assign unused_bsel = ^{s_axilite_AWADDR[1:0], s_axilite_ARADDR[1:0]};
  logic do_w, do_r;

  function automatic int unsigned wsel_of(input logic [ADDR_WIDTH-3:0] a);
    return (WSEL > 0) ? 32'(a) % (1 << WSEL) : 0;
  endfunction
  function automatic logic [MAW-1:0] line_of(input logic [ADDR_WIDTH-3:0] a);
    return MAW'(32'(a) >> WSEL);
  endfunction

  assign s_axilite_AWREADY = !aw_v;
  assign s_axilite_WREADY = !w_v;
  assign s_axilite_ARREADY = !ar_v;
  assign s_axilite_BRESP = 2'b00;
  assign s_axilite_RRESP = 2'b00;

  assign do_w = aw_v && w_v && !s_axilite_BVALID;
  assign do_r = !do_w && ar_v && !rd_wait && !s_axilite_RVALID;

  always_comb begin
    for (int i = 0; i < FOLD; i++) wline[i*32+:32] = line[i];
    wline[(FOLD-1)*32+:32] = w_d;  // the committing (last) word
    rline = LW'(cfg_rdata);
  end

  assign cfg_en = (do_w && wsel_of(aw_a) == FOLD - 1) || do_r;
  assign cfg_we = do_w;
  assign cfg_addr = do_w ? line_of(aw_a) : line_of(ar_a);
  assign cfg_wdata = wline[WIDTH-1:0];

  always_ff @(posedge clk) begin
    if (!rst_n) begin
      aw_v <= 1'b0;
      w_v <= 1'b0;
      ar_v <= 1'b0;
      rd_wait <= 1'b0;
      s_axilite_BVALID <= 1'b0;
      s_axilite_RVALID <= 1'b0;
    end else begin
      if (s_axilite_AWVALID && !aw_v) begin
        aw_v <= 1'b1;
        aw_a <= s_axilite_AWADDR[ADDR_WIDTH-1:2];
      end
      if (s_axilite_WVALID && !w_v) begin
        w_v <= 1'b1;
        w_d <= s_axilite_WDATA;
      end
      if (s_axilite_ARVALID && !ar_v) begin
        ar_v <= 1'b1;
        ar_a <= s_axilite_ARADDR[ADDR_WIDTH-1:2];
      end
      if (do_w) begin
        if (wsel_of(aw_a) < FOLD) line[wsel_of(aw_a)] <= w_d;
        aw_v <= 1'b0;
        w_v <= 1'b0;
        s_axilite_BVALID <= 1'b1;
      end else if (s_axilite_BVALID && s_axilite_BREADY) s_axilite_BVALID <= 1'b0;
      rd_wait <= do_r;
      if (rd_wait) begin
        s_axilite_RDATA <= (wsel_of(ar_a) < FOLD) ? rline[wsel_of(ar_a)*32+:32] : 32'd0;
        s_axilite_RVALID <= 1'b1;
        ar_v <= 1'b0;
      end else if (s_axilite_RVALID && s_axilite_RREADY) s_axilite_RVALID <= 1'b0;
    end
  end
endmodule
