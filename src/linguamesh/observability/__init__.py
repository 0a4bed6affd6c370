"""Structured logging, metrics and trace timelines."""
