"""Shared pytest fixtures. Heavy objects (backbones, the demo set) are built once per session."""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
