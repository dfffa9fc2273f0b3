# cocotb's Makefile flow for tb_harness + accel_top. Started by hw_sim/make_flow.py (through
# hw_sim/Makefile), never by hand: with the run's sim/make folder as the current directory, the
# validated SIM/WAVES/VLT_VERSION/COCOTB_RESULTS_FILE/BUILD_ARGS on the command line and the job
# in $MCEL_SIM_JOB (environment).
#
# Why every path here is relative to the current directory: cocotb's Makefiles paste paths into
# shell recipes unquoted, so a run folder whose path holds a space or make/shell syntax would
# break or inject. make_flow.py writes sources.mk with paths relative to this folder, checked
# to hold only letters, digits and ._+-/ (hw_sim/make_flow.py, sources_makefile).
include sources.mk
TOPLEVEL_LANG        = verilog
COCOTB_TOPLEVEL      = tb_harness
COCOTB_TEST_MODULES  = hw_sim.tb_accel
SIM_BUILD            = sim_build
COCOTB_RESULTS_FILE ?= results.xml
COMPILE_ARGS += --no-timing +define+FINN_SIMULATION -Wno-fatal -Wno-SELRANGE -Wno-MULTIDRIVEN \
  -Wno-UNOPTFLAT -Wno-INITIALDLY -Wno-lint -Wno-style -Wno-ZEROREPL -Wno-WIDTHTRUNC \
  -Wno-WIDTHEXPAND -Wno-PINCONNECTEMPTY -LDFLAGS "-pthread -latomic"
ifeq ($(WAVES),1)
VERILATOR_TRACE = 1
endif
include $(shell cocotb-config --makefiles)/Makefile.sim
# Only the harness and the memory arrays are VPI-visible (visibility.vlt in the sources), not
# every signal: cocotb's blanket --public-flat-rw blocks Verilator's optimisation (see
# bench/results/hw_sim.json, selective_over_public_all).
COMPILE_ARGS := $(filter-out --public-flat-rw,$(COMPILE_ARGS))
# The simulator's main() with the clock built in (hw_sim/cpp/cocotb_main.cpp; MCEL_MAIN comes
# from sources.mk), in place of cocotb's generic one; make_flow.py passes the plusarg that starts
# the clock (COCOTB_PLUSARGS).
VERILATOR_CPP := $(MCEL_MAIN)
