"""stream: streaming video analytics (capture -> OpenVINO workers -> sink) over ZeroMQ."""

__version__ = "0.1.0"
