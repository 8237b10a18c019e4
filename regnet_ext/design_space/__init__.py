"""The paper's method as a tool: design spaces, sampling under complexity budgets, short-training
sweeps, error EDFs, the empirical bootstrap and the quantized-linear width fit.

    from regnet_ext import design_space as ds

    # The local engine's workers are spawned processes that import this script again: keep the
    # sweep under the guard, or each of them starts it anew and the sweep fails.
    if __name__ == "__main__":
        samples = ds.sample("regnetx", 100, flops=(360e6, 400e6), seed=0)
        records = ds.run_sweep(samples, "regnetx.jsonl", epochs=5)    # resumable, parallel
        x, F = ds.error_edf([r["top1_error"] for r in records])
        ds.empirical_bootstrap([r["config"]["wm"] for r in records],
                               [r["top1_error"] for r in records])
        ds.fit_widths([24, 56, 152, 152, 368, 368])                      # -> WidthFit(..., e_fit)
"""
from .analysis import (group_by_space, load_results, missing_trials_warning, model_parameters,
                       parameter_table, settings_warning, summarize)
from .bootstrap import BootstrapResult, empirical_bootstrap
from .edf import complexity_bins, error_edf, matched_weights
from .engines import ENGINES, make_engine
from .fit import WidthFit, fit_error, fit_widths, per_block_widths
from .sample import Sample, load_samples, sample, save_samples, stagewise_complexity
from .spaces import (ANYNETX_A, ANYNETX_B, ANYNETX_C, ANYNETX_D, ANYNETX_E, REGNETX, REGNETY,
                     SPACES, AnyNetXSpace, DesignSpace, InvalidConfigError, RegNetSpace, get_space)
from .sweep import run_sweep, settings_diff, sweep_settings, train_trial


def build_model(sample_or_record, *, num_classes=1000, in_channels=3):
    """The nn.Module of a Sample or of a sample/sweep record (its stored architecture)."""
    from ..models.anynet import AnyNet
    from .sample import spec_from_dict

    record = sample_or_record.to_dict() if isinstance(sample_or_record, Sample) else sample_or_record
    fields = dict(record["spec"], num_classes=num_classes, in_channels=in_channels)
    return AnyNet(spec_from_dict(fields))


__all__ = [
    "ANYNETX_A", "ANYNETX_B", "ANYNETX_C", "ANYNETX_D", "ANYNETX_E", "REGNETX", "REGNETY", "SPACES",
    "AnyNetXSpace", "RegNetSpace", "DesignSpace", "InvalidConfigError", "get_space", "Sample",
    "sample", "save_samples", "load_samples", "stagewise_complexity", "build_model", "run_sweep",
    "sweep_settings", "train_trial", "ENGINES", "make_engine", "error_edf", "matched_weights",
    "complexity_bins", "empirical_bootstrap", "BootstrapResult", "fit_widths", "fit_error",
    "per_block_widths", "WidthFit", "load_results", "group_by_space", "model_parameters",
    "parameter_table", "summarize", "settings_diff", "settings_warning",
    "missing_trials_warning",
]
