// The simulator's main() for the cocotb testbench of tb_harness (hw_sim/tb_accel.py), used in
// place of cocotb's generic Verilator main by hw_sim/runner.py and hw_sim/cocotb.mk.
//
// Why a main of our own: the accelerator needs a free-running clock for the whole simulation.
// A cocotb Clock, even its C implementation (impl="gpi"), is a VPI timed callback plus a
// vpi_put_value on every edge, with a callback registered, allocated and removed each time; on
// the paper VGG3 build that cost about a fifth of the simulator's time next to the plain C++
// harness (bench/hw_sim.py). Here the clock is a plain assignment to the top-level port between
// time steps, and simulated time jumps from edge to edge. Everything else is the VPI contract
// cocotb relies on: start-of-simulation callbacks, value-change callbacks settled after every
// evaluation and every VPI write, the ReadWrite and ReadOnly regions of each time step, the
// NextSimTime and timed (Timer) callbacks at the start of the next one, end-of-simulation
// callbacks, and $finish (a finished cocotb test calls vpi_control(vpiFinish)).
//
// Plusarg +mcel_clock_ps=P: drive ap_clk with period P picoseconds (low for the first half
// period). Without it no clock is driven, and the testbench starts a cocotb Clock itself.
// Arguments --trace and --trace-file F dump waveforms when built with --trace (VM_TRACE).

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "Vtop.h"
#include "verilated.h"
#include "verilated_vpi.h"

#if VM_TRACE
#if VM_TRACE_FST
#include <verilated_fst_c.h>
using Trace = VerilatedFstC;
static const char* kDefaultTraceFile = "dump.fst";
#else
#include <verilated_vcd_c.h>
using Trace = VerilatedVcdC;
static const char* kDefaultTraceFile = "dump.vcd";
#endif
#endif

extern "C" void vlog_startup_routines_bootstrap(void);  // cocotb's VPI library entry

namespace {

constexpr uint64_t kNever = ~0ULL;
// Simulated time in time-precision units. Also given to the context, but the context falls back
// to sc_time_stamp() while its time is still 0, so that must not ask the context back.
uint64_t g_time = 0;

// Value-change callbacks may write signals that trigger further callbacks: repeat until quiet.
void settle_value_callbacks() {
  while (VerilatedVpi::callValueCbs()) {
  }
}

// The regions of one time step: evaluate until neither VPI writes nor callbacks change anything,
// then the ReadWrite region (cocotb applies its scheduled writes there), and once the step is
// stable the ReadOnly region.
void run_time_step(Vtop& top) {
  do {
    do {
      top.eval_step();
      VerilatedVpi::clearEvalNeeded();
      VerilatedVpi::doInertialPuts();
      settle_value_callbacks();
    } while (VerilatedVpi::evalNeeded());
    VerilatedVpi::callCbs(cbReadWriteSynch);
    VerilatedVpi::doInertialPuts();
    settle_value_callbacks();
  } while (VerilatedVpi::evalNeeded());
  top.eval_end_step();
  VerilatedVpi::callCbs(cbReadOnlySynch);
}

// Half the clock period in the simulator's time precision; 0 when no clock was asked for.
uint64_t half_period(VerilatedContext& context) {
  const std::string arg = context.commandArgsPlusMatch("mcel_clock_ps=");
  if (arg.empty()) return 0;
  const long long period_ps = std::atoll(arg.c_str() + std::string("+mcel_clock_ps=").size());
  // timeprecision() is a power of ten, e.g. -12 for picoseconds.
  if (context.timeprecision() < -12) {
    std::fprintf(stderr, "+mcel_clock_ps: a time precision finer than 1 ps is not supported\n");
    std::exit(2);
  }
  long long ps_per_unit = 1;
  for (int p = context.timeprecision(); p > -12; --p) ps_per_unit *= 10;
  if (period_ps <= 0 || period_ps % (2 * ps_per_unit) != 0) {
    std::fprintf(stderr, "+mcel_clock_ps=%lld: the period must be a positive even number of "
                 "time-precision units (%lld ps each)\n", period_ps, ps_per_unit);
    std::exit(2);
  }
  return static_cast<uint64_t>(period_ps / ps_per_unit / 2);
}

}  // namespace

double sc_time_stamp() { return static_cast<double>(g_time); }

int main(int argc, char** argv) {
  auto context = std::make_unique<VerilatedContext>();
  Verilated::threadContextp(context.get());
  context->commandArgs(argc, argv);
  auto top = std::make_unique<Vtop>(context.get(), "");
  Verilated::fatalOnVpiError(false);  // cocotb probes handles that may not exist

#if VM_TRACE
  std::unique_ptr<Trace> trace;
  std::string trace_file = kDefaultTraceFile;
  bool trace_on = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--trace") trace_on = true;
    if (a == "--trace-file" && i + 1 < argc) trace_file = argv[++i];
  }
  if (trace_on) {
    context->traceEverOn(true);
    trace = std::make_unique<Trace>();
    top->trace(trace.get(), 99);
    trace->open(trace_file.c_str());
  }
#endif

  const uint64_t half = half_period(*context);
  uint64_t next_edge = half;
  if (half) top->ap_clk = 0;

  vlog_startup_routines_bootstrap();
  VerilatedVpi::callCbs(cbStartOfSimulation);
  settle_value_callbacks();

  while (!context->gotFinish()) {
    run_time_step(*top);
#if VM_TRACE
    if (trace) trace->dump(context->time());
#endif
    uint64_t next = VerilatedVpi::cbNextDeadline();  // kNever when no timed callback waits
    if (half) next = std::min(next, next_edge);
    if (next == kNever) break;  // nothing can happen any more
    g_time = next;
    context->time(next);
    VerilatedVpi::callCbs(cbNextSimTime);
    settle_value_callbacks();
    if (half && next == next_edge) {
      top->ap_clk = !top->ap_clk;
      next_edge += half;
      settle_value_callbacks();  // edge triggers see the edge before the design evaluates it
    }
    VerilatedVpi::callTimedCbs();
    settle_value_callbacks();
  }

  top->final();
  VerilatedVpi::callCbs(cbEndOfSimulation);
#if VM_TRACE
  if (trace) trace->close();
#endif
  return context->errorCount() > 0 ? 1 : 0;
}
