"""Pure mathematics of LoRA+ scaling: exponent calculus, exact reduced toy dynamics, symbolic checks.

This package never imports torch or :mod:`sims`.
"""
