"""LinguaMesh: distributed real-time speech-to-speech translation."""

__version__ = "0.1.0"
