// Plain C++ harness for a Verilated accel_top (flows/stitch.py): streams N inputs through the
// AXI-stream input, collects the integer outputs, writes them to a file and prints cycle counts.
//
// Why plain C++: about 3 M cycles/s, versus ~0.5 M under cocotb; used for bit-exactness checks
// of whole test sets and for timing. Memories load their init files ($readmemh) at start, so
// new weights need a new init file, not a rebuild.
//
// usage: accel_harness IN.bin N IN_ELEMS IN_BITS IN_SIMD IN_KIND OUT.bin OUT_ELEMS OUT_BITS OUT_PE
//   IN.bin   N*IN_ELEMS little-endian int32 values (image after image)
//   IN_KIND  u (unsigned), s (signed two's complement) or b (bipolar: +1 -> 1, -1 -> 0)
//   OUT.bin  N*OUT_ELEMS little-endian int64 values (sign-extended from OUT_BITS)
// stdout: one JSON line with cycle statistics.
#include <cstdint>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "Vaccel_top.h"
#include "verilated.h"

namespace {

using Words = std::vector<uint32_t>;

// Overloads for the Verilator port types (CData/SData/IData/QData/VlWide).
void put(CData& s, const Words& w) { s = static_cast<CData>(w[0]); }
void put(SData& s, const Words& w) { s = static_cast<SData>(w[0]); }
void put(IData& s, const Words& w) { s = w[0]; }
void put(QData& s, const Words& w) { s = (static_cast<QData>(w.size() > 1 ? w[1] : 0) << 32) | w[0]; }
template <std::size_t N>
void put(VlWide<N>& s, const Words& w) {
  for (std::size_t i = 0; i < N; ++i) s[i] = i < w.size() ? w[i] : 0;
}
Words get(CData s) { return {s}; }
Words get(SData s) { return {s}; }
Words get(IData s) { return {s}; }
Words get(QData s) { return {static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32)}; }
template <std::size_t N>
Words get(const VlWide<N>& s) {
  Words w(N);
  for (std::size_t i = 0; i < N; ++i) w[i] = s[i];
  return w;
}

void set_field(Words& w, unsigned lsb, unsigned bits, uint64_t v) {
  for (unsigned b = 0; b < bits; ++b)
    if ((v >> b) & 1u) w[(lsb + b) / 32] |= 1u << ((lsb + b) % 32);
}
int64_t get_field(const Words& w, unsigned lsb, unsigned bits) {
  uint64_t v = 0;
  for (unsigned b = 0; b < bits; ++b)
    if ((lsb + b) / 32 < w.size() && ((w[(lsb + b) / 32] >> ((lsb + b) % 32)) & 1u)) v |= 1ull << b;
  if (bits < 64 && ((v >> (bits - 1)) & 1u)) v |= ~0ull << bits;  // sign-extend
  return static_cast<int64_t>(v);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 11) {
    std::fprintf(stderr,
                 "usage: %s IN.bin N IN_ELEMS IN_BITS IN_SIMD IN_KIND OUT.bin OUT_ELEMS OUT_BITS "
                 "OUT_PE\n",
                 argv[0]);
    return 2;
  }
  const std::string in_path = argv[1];
  const long n = std::atol(argv[2]);
  const unsigned in_elems = std::atoi(argv[3]), in_bits = std::atoi(argv[4]);
  const unsigned in_simd = std::atoi(argv[5]);
  const char in_kind = argv[6][0];
  const std::string out_path = argv[7];
  const unsigned out_elems = std::atoi(argv[8]), out_bits = std::atoi(argv[9]);
  const unsigned out_pe = std::atoi(argv[10]);
  if (in_elems % in_simd || out_elems % out_pe) {
    std::fprintf(stderr, "IN_SIMD must divide IN_ELEMS and OUT_PE must divide OUT_ELEMS\n");
    return 2;
  }

  std::vector<int32_t> in(static_cast<size_t>(n) * in_elems);
  std::ifstream fin(in_path, std::ios::binary);
  fin.read(reinterpret_cast<char*>(in.data()), in.size() * sizeof(int32_t));
  if (!fin) {
    std::fprintf(stderr, "cannot read %zu int32 values from %s\n", in.size(), in_path.c_str());
    return 2;
  }

  auto ctx = std::make_unique<VerilatedContext>();
  ctx->commandArgs(argc, argv);
  auto top = std::make_unique<Vaccel_top>(ctx.get());
  const unsigned in_words = (in_simd * in_bits + 31) / 32 + 1;
  const unsigned beats_in = in_elems / in_simd, beats_out = out_elems / out_pe;
  const long total_in = n * beats_in, total_out = n * beats_out;
  std::vector<int64_t> out(static_cast<size_t>(n) * out_elems);

  auto tick = [&]() {
    top->ap_clk = 1;
    top->eval();
    ctx->timeInc(1);
    top->ap_clk = 0;
    top->eval();
    ctx->timeInc(1);
  };
  top->ap_clk = 0;
  top->ap_rst_n = 0;
  top->s_axis_0_tvalid = 0;
  top->m_axis_0_tready = 1;
  top->eval();
  for (int i = 0; i < 16; ++i) tick();
  top->ap_rst_n = 1;
  top->eval();

  // Timed from here to the last output beat: the streaming alone, as the cocotb testbench
  // times its batches (bench/hw_sim.py compares the two).
  const auto stream_start = std::chrono::steady_clock::now();
  long sent = 0, recv = 0, cycle = 0, first_out = -1, last_out = -1;
  std::vector<long> image_done;
  const long max_cycles = 1000000L + 100000L * (total_in + total_out);
  while (recv < total_out && cycle < max_cycles) {
    // Drive this cycle's input beat.
    if (sent < total_in) {
      Words w(in_words, 0);
      const long img = sent / beats_in, beat = sent % beats_in;
      for (unsigned s = 0; s < in_simd; ++s) {
        int32_t v = in[img * in_elems + beat * in_simd + s];
        uint64_t enc = in_kind == 'b' ? (v > 0 ? 1u : 0u) : static_cast<uint64_t>(v);
        set_field(w, s * in_bits, in_bits, enc & ((in_bits >= 64) ? ~0ull : ((1ull << in_bits) - 1)));
      }
      put(top->s_axis_0_tdata, w);
      top->s_axis_0_tvalid = 1;
    } else {
      top->s_axis_0_tvalid = 0;
    }
    top->eval();
    const bool in_fire = top->s_axis_0_tvalid && top->s_axis_0_tready;
    const bool out_fire = top->m_axis_0_tvalid && top->m_axis_0_tready;
    if (out_fire) {
      Words w = get(top->m_axis_0_tdata);
      const long img = recv / beats_out, beat = recv % beats_out;
      for (unsigned p = 0; p < out_pe; ++p)
        out[img * out_elems + beat * out_pe + p] = get_field(w, p * out_bits, out_bits);
      if (first_out < 0) first_out = cycle;
      last_out = cycle;
      ++recv;
      if (recv % beats_out == 0) image_done.push_back(cycle);
    }
    tick();
    if (in_fire) ++sent;
    ++cycle;
  }
  const double stream_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - stream_start).count();
  top->final();
  if (recv < total_out) {
    std::fprintf(stderr, "timeout: received %ld of %ld output beats after %ld cycles\n", recv,
                 total_out, cycle);
    return 1;
  }
  std::ofstream fout(out_path, std::ios::binary);
  fout.write(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(int64_t));
  double interval = image_done.size() > 1
                        ? double(image_done.back() - image_done.front()) / (image_done.size() - 1)
                        : double(last_out + 1);
  std::printf(
      "{\"images\": %ld, \"cycles\": %ld, \"latency_cycles\": %ld, "
      "\"cycles_per_image\": %.3f, \"stream_seconds\": %.6f}\n",
      n, cycle, image_done.empty() ? -1 : image_done.front() + 1, interval, stream_seconds);
  return 0;
}
