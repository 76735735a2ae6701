"""stream: streaming video analytics (capture -> OpenVINO workers -> sink) over ZeroMQ.

OpenVINO's usage telemetry is off in every process that imports this package. ``import
openvino`` otherwise reports the import to Google Analytics unless the user opted out
(``~/intel/openvino_telemetry``), and it does so by forking a process from a background
thread. Our roles are multi-threaded (ZeroMQ, OpenVINO, stdin, helpers), so such a fork
can deadlock in the child; the child also inherits our SIGTERM handler, so it ignores the
terminate that should end it, outlives its parent and holds the parent's pipes and
sockets (seen: a ``stream run`` that never ended after one of its workers was killed).
A camera site has no business phoning home either. Blocking the ``openvino_telemetry``
import makes OpenVINO use its built-in no-op stub (``openvino.tools.ovc.telemetry_stub``).
"""

import sys

sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]

__version__ = "0.1.0"
