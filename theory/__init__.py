"""Pure mathematics of LoRA+ scaling: exponent calculus, exact reduced dynamics, symbolic checks.

This package never imports torch or :mod:`sims`.
"""
