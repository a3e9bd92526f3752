"""Calibration: input sources, sample extraction (im2col), streaming statistics."""
