"""Reading official-format checkpoints without torch; generated weights; download failures."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest_model import _Global, official_shapes, random_state_dict, write_checkpoint

from stream.errors import CheckpointError
from stream.model import checkpoint as ck


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return random_state_dict(seed=3)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory, state: dict[str, np.ndarray]) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ck") / "convnext.pth", state)


def test_expected_shapes_match_the_original_code() -> None:
    assert ck.expected_shapes() == official_shapes()
    total = sum(int(np.prod(s)) for s in ck.expected_shapes().values())
    assert total == ck.PARAMETER_COUNT == 28_589_128


def test_reads_pure_python_checkpoint_exactly(ckpt: Path, state: dict[str, np.ndarray]) -> None:
    weights = ck.read_checkpoint(ckpt)
    assert set(weights) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(weights[key], value, err_msg=key)
        assert weights[key].flags.c_contiguous and weights[key].dtype == np.float32


def test_reads_bare_state_dict(tmp_path: Path, state: dict[str, np.ndarray]) -> None:
    path = write_checkpoint(tmp_path / "bare.pth", state, wrap=False, share_storage=False)
    np.testing.assert_array_equal(ck.read_checkpoint(path)["head.bias"], state["head.bias"])


def test_reads_torch_saved_checkpoint(tmp_path: Path, state: dict[str, np.ndarray]) -> None:
    torch = pytest.importorskip("torch")
    sd = {k: torch.from_numpy(v.copy()) for k, v in state.items()}
    sd["head.weight"] = torch.from_numpy(np.ascontiguousarray(state["head.weight"].T)).t()
    assert not sd["head.weight"].is_contiguous()  # a strided view, as torch may store
    sd["norm.bias"] = sd["norm.bias"].to(torch.float16)  # another storage type
    path = tmp_path / "torch.pth"
    torch.save({"model": sd}, path)
    weights = ck.read_checkpoint(path)
    for key, value in state.items():
        expect = value.astype(np.float16).astype(np.float32) if key == "norm.bias" else value
        np.testing.assert_array_equal(weights[key], expect, err_msg=key)


def test_missing_key_is_named(tmp_path: Path, state: dict[str, np.ndarray]) -> None:
    partial = {k: v for k, v in state.items() if k != "stages.2.5.pwconv1.bias"}
    path = write_checkpoint(tmp_path / "partial.pth", partial)
    with pytest.raises(CheckpointError, match=r"stages\.2\.5\.pwconv1\.bias.*missing"):
        ck.read_checkpoint(path)


def test_wrong_shape_is_named(tmp_path: Path, state: dict[str, np.ndarray]) -> None:
    bad = dict(state)
    bad["stages.0.1.dwconv.weight"] = np.zeros((96, 1, 3, 3), np.float32)
    path = write_checkpoint(tmp_path / "bad.pth", bad)
    with pytest.raises(CheckpointError, match=r"stages\.0\.1\.dwconv\.weight.*\[96, 1, 3, 3\]"):
        ck.read_checkpoint(path)


def test_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(b"\x80\x02}q\x00." * 100)  # a legacy (non-zip) pickle header
    with pytest.raises(CheckpointError, match="not a PyTorch zip"):
        ck.read_checkpoint(path)


def test_truncated_file(tmp_path: Path, ckpt: Path) -> None:
    data = ckpt.read_bytes()
    for cut in (len(data) // 2, len(data) - 100):
        path = tmp_path / f"cut{cut}.pth"
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=str(path)):
            ck.read_checkpoint(path)


def test_short_storage_is_reported(tmp_path: Path, ckpt: Path) -> None:
    path = tmp_path / "short.pth"
    with zipfile.ZipFile(ckpt) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[:8] if item.filename == "archive/data/5" else data)
    with pytest.raises(CheckpointError, match="truncated"):
        ck.read_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no such file.*stream model fetch"):
        ck.read_checkpoint(tmp_path / "nope.pth")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (_Global("os", "system"), (f"touch {self.marker}",))


def test_pickle_code_is_never_executed(tmp_path: Path, state: dict[str, np.ndarray]) -> None:
    marker = tmp_path / "pwned"
    path = write_checkpoint(tmp_path / "evil.pth", state, extra_globals=_Evil(marker))
    with pytest.raises(CheckpointError, match=r"refusing to load os\.system"):
        ck.read_checkpoint(path)
    assert not marker.exists()


def test_generated_weights_are_deterministic_and_complete() -> None:
    a, b = ck.generate_weights(0), ck.generate_weights(0)
    assert ck.validate_weights(a, "generated").keys() == official_shapes().keys()
    for key in ("stages.2.4.pwconv1.weight", "head.weight", "stages.3.2.gamma"):
        np.testing.assert_array_equal(a[key], b[key])
    assert 0.3 <= float(a["stages.0.0.gamma"].mean()) <= 1.0
    assert not np.array_equal(ck.generate_weights(1)["head.weight"], a["head.weight"])


def test_sha384_and_official_check(ckpt: Path) -> None:
    assert ck.sha384_of(ckpt) == hashlib.sha384(ckpt.read_bytes()).hexdigest()
    assert not ck.is_official(ckpt)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_download_offline_fails_in_one_line(tmp_path: Path) -> None:
    port = _closed_port()
    urls = [f"http://127.0.0.1:{port}/a.pth", f"http://127.0.0.1:{port}/b.pth"]
    target = tmp_path / "w" / ck.OFFICIAL_FILENAME
    with pytest.raises(CheckpointError) as info:
        ck.download_checkpoint(target, urls, timeout=2)
    message = str(info.value)
    assert "\n" not in message
    assert ck.OFFICIAL_URLS[0] in message and f"stream model build --weights {target}" in message
    assert list(target.parent.iterdir()) == []  # no partial file left


@pytest.fixture()
def http_server(tmp_path: Path) -> Iterator[tuple[str, bytes]]:
    payload = b"not really a checkpoint" * 1000
    (tmp_path / "w.pth").write_bytes(payload)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/w.pth", payload
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_download_verifies_hash_and_renames(tmp_path: Path, http_server: tuple[str, bytes]) -> None:
    url, payload = http_server
    dest = tmp_path / "out" / "x.pth"
    with pytest.raises(CheckpointError, match="SHA-384 mismatch"):
        ck.download_checkpoint(dest, [url], timeout=5)
    assert list(dest.parent.iterdir()) == []
    good = hashlib.sha384(payload).hexdigest()
    assert ck.download_checkpoint(dest, [url], timeout=5, expected_sha384=good) == dest
    assert dest.read_bytes() == payload and list(dest.parent.iterdir()) == [dest]
