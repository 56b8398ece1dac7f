"""Experiments: toy simulators, measurement, sweeps, plots and the command line.

Imports :mod:`theory`, never the reverse.
"""

__version__ = "0.1.0"
