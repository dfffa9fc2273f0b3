# cocotb's Makefile flow for tb_harness + accel_top (called by hw_sim/Makefile, which writes
# $(MAKE_DIR)/sources.mk and job.json first).
include $(MAKE_DIR)/sources.mk
TOPLEVEL_LANG        = verilog
COCOTB_TOPLEVEL      = tb_harness
COCOTB_TEST_MODULES  = hw_sim.tb_accel
SIM_BUILD            = $(MAKE_DIR)/sim_build
COCOTB_RESULTS_FILE  = $(MAKE_DIR)/results.xml
COMPILE_ARGS += --no-timing +define+FINN_SIMULATION -Wno-fatal -Wno-SELRANGE -Wno-MULTIDRIVEN \
  -Wno-UNOPTFLAT -Wno-INITIALDLY -Wno-lint -Wno-style -Wno-ZEROREPL -Wno-WIDTHTRUNC \
  -Wno-WIDTHEXPAND -Wno-PINCONNECTEMPTY -LDFLAGS "-pthread -latomic"
ifeq ($(WAVES),1)
VERILATOR_TRACE = 1
endif
export MCEL_SIM_JOB := $(MAKE_DIR)/job.json
include $(shell cocotb-config --makefiles)/Makefile.sim
# Only the harness and the memory arrays are VPI-visible (visibility.vlt in the sources), not
# every signal: cocotb's blanket --public-flat-rw blocks Verilator's optimisation (see
# bench/results/hw_sim.json, selective_over_public_all).
COMPILE_ARGS := $(filter-out --public-flat-rw,$(COMPILE_ARGS))
