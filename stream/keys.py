"""`stream keys generate NAME [--dir DIR]`: a CurveZMQ key pair for one machine or role.
"""

from __future__ import annotations

import argparse

from stream.security import generate

EPILOG = """\
writes NAME.key (public: copy it into the trusted folder of every machine this one talks
to) and NAME.key_secret (secret, mode 0600: it stays on this machine; security.key names
it). Existing files are never overwritten.

examples:
  stream keys generate hub --dir keys            on the machine of the sink and captures
  stream keys generate worker-1 --dir keys       on an inference machine
  cp keys/worker-1.key HUB:keys/trusted/         let worker-1 in (no restart needed)
"""


def cmd_generate(args: argparse.Namespace) -> int:
    public, secret = generate(args.name, args.dir)
    print(f"public key  {public}   (copy into the trusted folder of its peers)")
    print(f"secret key  {secret}   (keep here; name it in security.key)")
    return 0


def add_keys_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `keys generate` on the main CLI."""
    keys = subparsers.add_parser(
        "keys", help="CurveZMQ key pairs for links between machines",
        description="CurveZMQ key pairs (pyzmq certificate files) for links between machines.")
    sub = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    gen = sub.add_parser("generate", help="write NAME.key and NAME.key_secret",
                         description="Write a new key pair NAME.key / NAME.key_secret.",
                         epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    gen.add_argument("name", help="file name of the pair, e.g. hub or worker-1")
    gen.add_argument("--dir", default="keys", help="folder to write into (default keys/)")
    gen.set_defaults(func=cmd_generate)
