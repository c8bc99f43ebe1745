"""lrnn: linear RNNs and state-space models with negative eigenvalues, in pure PyTorch."""

__version__ = "0.1.0.dev0"
