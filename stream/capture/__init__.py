"""The capture role: decode one source, stamp every frame, send crops to workers.

One module per part:

    session.py     SourceSession: open (backoff), watchdog, read-ahead, pacing, staleness,
                   loop, end of file; yields frames and sends nothing
    rtsp_probe.py  why an RTSP open failed (404 path, 401 credentials, network)
    policy.py      the back-pressure policy objects (wait, drop)
    links.py       the two sink links (control, video) and bounded sends
    router.py      Router: crops to workers, frames/drops/status/eos to the sink
    role.py        Capture (session + router, exit status) and run_capture (sockets)
"""

from stream.capture.policy import BackPressure, DropPolicy, WaitPolicy, policy_for
from stream.capture.role import Capture, make_source, model_input_size, run_capture
from stream.capture.session import Captured, CaptureSettings, LagMeter, SourceSession

__all__ = [
    "BackPressure",
    "Capture",
    "CaptureSettings",
    "Captured",
    "DropPolicy",
    "LagMeter",
    "SourceSession",
    "WaitPolicy",
    "make_source",
    "model_input_size",
    "policy_for",
    "run_capture",
]
