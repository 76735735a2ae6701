"""A small real RTSP server for the tests (GStreamer gst-rtsp-server, run by /usr/bin/python3).

Serves a looping live H.264 test pattern at ``rtsp://127.0.0.1:PORT/test``::

    /usr/bin/python3 tests/rtsp_server.py --port 8554 [--user U --password P]
                                          [--stall-after S] [--fps 15]

* prints ``READY rtsp://127.0.0.1:PORT/test`` (credentials never printed) once listening;
  ``--port 0`` picks a free port, the READY line tells which;
* ``--user/--password``: basic auth is required (a client without them gets 401);
* ``--stall-after S``: S seconds after a client's media is prepared, a ``valve`` stops every
  buffer while the RTSP/TCP session stays open: a "camera that hangs" for watchdog tests;
* exits cleanly (status 0) on SIGTERM or SIGINT.

It runs under Debian's python3 because the venv has no ``gi`` bindings.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def pipeline(width: int, height: int, fps: int) -> str:
    return (
        f"( videotestsrc is-live=true pattern=ball "
        f"! video/x-raw,width={width},height={height},framerate={fps}/1 "
        f"! valve name=valve drop=false "
        f"! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={fps} bitrate=500 "
        f"! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8554)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--path", default="/test")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--stall-after", type=float, default=None, metavar="S")
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    args = ap.parse_args()

    Gst.init(None)
    loop = GLib.MainLoop()
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(pipeline(args.width, args.height, args.fps))
    # One pipeline shared by every client: a stall hits reconnecting clients too.
    factory.set_shared(True)

    if args.stall_after is not None:
        def on_configure(_factory: object, media: GstRtspServer.RTSPMedia) -> None:
            valve = media.get_element().get_by_name("valve")

            def stall() -> bool:
                print("STALLED", flush=True)
                valve.set_property("drop", True)
                return False  # one shot

            GLib.timeout_add(int(args.stall_after * 1000), stall)

        factory.connect("media-configure", on_configure)

    if args.user is not None:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "user")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password or ""),
                       token)
        server.set_auth(auth)
        perms = GstRtspServer.RTSPPermissions()
        perms.add_role_from_structure(Gst.Structure.new_from_string(
            "user, media.factory.access=(boolean)true, media.factory.construct=(boolean)true"))
        factory.set_permissions(perms)

    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"cannot listen on {args.host}:{args.port}", file=sys.stderr, flush=True)
        return 1

    def quit_(*_: object) -> bool:
        loop.quit()
        return False

    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, quit_)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, quit_)
    # Clean up idle sessions quickly so a restarted client is not refused.
    GLib.timeout_add_seconds(2, lambda: (server.get_session_pool().cleanup(), True)[1])
    print(f"READY rtsp://{args.host}:{server.get_bound_port()}{args.path}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
