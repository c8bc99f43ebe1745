"""Analyses of trained models: the token dynamics of selective SSMs (``docs/token_dynamics.md``)."""

from lrnn.analysis.dynamics import (DEFAULT_RTOL, REGIMES, LayerDynamics, Spectrum, TokenSystem, Trajectory,
                                    analyze_model, integrate, interaction_matrix, mamba_layers, natural_time,
                                    relative_rate, require_mamba_layers, rk4, self_interaction, spectrum, step_sizes,
                                    token_system, token_velocity, x_proj_inputs)
from lrnn.analysis.experiments import write_report as write_experiment_report
from lrnn.analysis.plots import OUTPUT_NAMES, check_output_directory, plot_norms, plot_spectra, write_dynamics

__all__ = ["TokenSystem", "Spectrum", "Trajectory", "LayerDynamics", "REGIMES", "DEFAULT_RTOL", "interaction_matrix",
           "spectrum", "step_sizes", "token_velocity", "relative_rate", "rk4", "integrate", "self_interaction",
           "natural_time", "mamba_layers", "require_mamba_layers", "token_system", "x_proj_inputs", "analyze_model",
           "OUTPUT_NAMES", "check_output_directory", "plot_spectra", "plot_norms", "write_dynamics",
           "write_experiment_report"]
