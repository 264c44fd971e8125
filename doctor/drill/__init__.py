"""`hivemind doctor drill`: inject each known fault into a scratch stack and prove that the
check named for it catches it (see :mod:`doctor.drill.engine`)."""

from doctor.drill.engine import DrillReport, FaultResult, run_drill, select_faults
from doctor.drill.faults import FAULTS, Fault

__all__ = ["FAULTS", "DrillReport", "Fault", "FaultResult", "run_drill", "select_faults"]
