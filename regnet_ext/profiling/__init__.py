"""Profiling: the per-stage profiler, the analytic traffic (bytes moved) model of each fusion
schedule, and device roofline ceilings."""
from .profiler import build_model, profile, profile_stock_and_fused
from .report import ProfileResult, plot_profiles, stage_speedups
from .roofline import NOMINAL, Ceiling, device_ceiling, measure_ceiling
from .schedules import (COMPILE, EAGER, FUSED_SCHEDULE, OURS, OURS_OPS, SCHEDULES, Schedule,
                        get_schedule, register_schedule)
from .stages import model_units, spec_from_model
from .traffic import Traffic, TrafficSummary, block_traffic, identity_block, model_traffic

__all__ = [
    "profile", "profile_stock_and_fused", "ProfileResult", "plot_profiles", "stage_speedups",
    "build_model",
    "model_traffic", "block_traffic", "identity_block", "Traffic", "TrafficSummary",
    "Schedule", "SCHEDULES", "EAGER", "COMPILE", "OURS", "OURS_OPS",
    "FUSED_SCHEDULE", "get_schedule", "register_schedule",
    "Ceiling", "NOMINAL", "device_ceiling", "measure_ceiling", "model_units", "spec_from_model",
]
