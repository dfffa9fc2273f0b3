// param_mem: a plain on-chip parameter memory (weights or thresholds).
//
// Why it exists: fault injection writes bit flips straight into the stored words through
// simulator handles, so the storage must be ONE plain unpacked array with a stable name
// (`Mem`) and no packing, ECC or prefetch in between.  A flipped bit is seen by the next
// read of that word (synchronous read, one cycle latency, like a BRAM).
//
// File format of INIT_FILE ($readmemh): one hex word per line, no prefix, line i = Mem[i]
// (FINN's memblock.dat style).  A second port (cfg_*: read or write one whole word, read data
// one cycle later) serves the AXI-lite adapter axil_mem_port; tie cfg_en to 0 when unused.
module param_mem #(
    parameter int WIDTH = 8,
    parameter int DEPTH = 16,
    parameter INIT_FILE = "",
    localparam int AW = (DEPTH > 1) ? $clog2(DEPTH) : 1
) (
    input  logic             clk,
    input  logic             rd_en,
    input  logic [   AW-1:0] rd_addr,
    output logic [WIDTH-1:0] rd_data,
    input  logic             cfg_en,
    input  logic             cfg_we,
    input  logic [   AW-1:0] cfg_addr,
    input  logic [WIDTH-1:0] cfg_wdata,
    output logic [WIDTH-1:0] cfg_rdata
);
  logic [WIDTH-1:0] Mem[DEPTH];

  initial begin
    if (INIT_FILE != "") $readmemh(INIT_FILE, Mem);
  end

  always_ff @(posedge clk) begin
    if (rd_en) rd_data <= Mem[rd_addr];
    if (cfg_en) begin
      if (cfg_we) Mem[cfg_addr] <= cfg_wdata;
      else cfg_rdata <= Mem[cfg_addr];
    end
  end
endmodule
