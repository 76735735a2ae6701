"""Credential redaction for anything printed or sent: URLs, log lines, error messages.
"""

from __future__ import annotations

import re

# --------------------------------------------------------------------------- redaction

# `scheme://userinfo@`: greedy up to the LAST '@' of the whitespace-delimited token, so a
# password containing '@', ':' or '/' is still covered. It may over-redact a URL whose path or
# query holds an '@' (the host part then reads ***), which is the safe direction.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>\S*)@")
# A userinfo made only of `${NAME}` references (no `:-default`, which could be a literal secret).
_TEMPLATE_USERINFO = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}(:\$\{[A-Za-z_][A-Za-z0-9_]*\})?")


def redact_url(url: str) -> str:
    """Hide the credentials of every URL in `url`.

    Args:
        url: a URL, or any text that may contain URLs (a log line, an error message).

    Returns:
        The text with `scheme://user:pass@` replaced by `scheme://***:***@`, a user-only
        `scheme://user@` by `scheme://***@`, and the values of query parameters such as
        `password=`, `user=`, `token=` by `***`. Other text is returned unchanged.
    """

    def _hide(match: re.Match[str]) -> str:
        if _TEMPLATE_USERINFO.fullmatch(match["userinfo"]):
            return match[0]  # only `${NAME}` references, as written in a config: no secret
        hidden = "***:***" if ":" in match["userinfo"] else "***"
        return f"{match['scheme']}{hidden}@"

    return _SECRET_PARAM.sub(r"\g<key>***", _USERINFO.sub(_hide, url))


# `?user=..&password=..` style credentials some cameras take in the query string.
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;](?:user(?:name)?|pass(?:word|wd)?|pwd|token|auth|key|secret)=)[^&;#\s]*",
    re.IGNORECASE,
)


