"""vstmon: a real-time action-recognition monitor built on the Video Swin Transformer."""

__version__ = "0.1.0"
