"""Download of the released ava-mlsp heads (ku/models/released.py) against a loopback HTTP server
on 127.0.0.1 (no real network): success, resume of an interrupted transfer with an HTTP Range
request, a wrong checksum refused and not cached, offline -> what to download and where; the
CLI's ``--head-weights released``."""
import hashlib
import http.server
import threading

import numpy as np
import pytest

from ku.models import released
from ku.models.released import RELEASED, ReleasedWeights, ReleasedWeightsError

PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = {}          # path -> bytes
        self.cut_next = 0        # number of coming GETs to cut off half-way
        self.range_support = True
        self.requests = []       # (path, Range header)


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        rng = self.headers.get("Range")
        srv.requests.append((self.path, rng))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if rng and srv.range_support:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_next:
            srv.cut_next -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    srv = _Server()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def spec(monkeypatch, tmp_path, server):
    """A small 'released' file served by the loopback server; Keras' cache in tmp_path."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv(released.BASE_URL_ENV, f"http://127.0.0.1:{server.server_port}/models")
    s = ReleasedWeights("mlsp-test", "test_orig", "single3fc", "narrow", len(PAYLOAD), SHA)
    server.files["/models/test_orig/model_best_weights.h5"] = PAYLOAD
    return s


def test_registry_matches_the_released_lfs_pointers():
    wide, narrow = RELEASED["mlsp-pool3fc"], RELEASED["mlsp-single3fc"]
    assert (wide.folder, wide.size, wide.features) == ("irnv2_mlsp_wide_orig", 255_383_120, "wide")
    with pytest.warns(DeprecationWarning, match="features"):
        assert wide.pooling == "wide"  # the old attribute name
    assert wide.sha256 == "47f9a29caed163d9dea2ed15b75aada4477cdb76bc2eac9c55f21dd3573a7a90"
    assert (narrow.folder, narrow.size) == ("irnv2_mlsp_narrow_orig", 148_210_528)
    assert narrow.sha256 == "0121f3235245df3db37e82fc3e5a84e22aaa731f24b3ffd3ea63d421c2b60102"
    assert wide.url(released.DEFAULT_BASE_URL) == (
        "https://media.githubusercontent.com/media/subpic/ava-mlsp/master/models/"
        "irnv2_mlsp_wide_orig/model_best_weights.h5")


def test_download_verifies_and_caches(spec, server, tmp_path):
    path = released.released_weights_path(spec, retries=0)
    assert path == tmp_path / "keras_home" / "models" / "ava-mlsp_test_orig_model_best_weights.h5"
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name(path.name + ".part").exists()
    n = len(server.requests)
    assert released.released_weights_path(spec) == path  # cached: no request
    assert len(server.requests) == n


def test_interrupted_transfer_resumes_with_range(spec, server):
    server.cut_next = 1
    path = released.released_weights_path(spec, retries=2, wait=0)
    assert path.read_bytes() == PAYLOAD
    first, second = server.requests[:2]
    assert first[1] is None and second[1] == f"bytes={len(PAYLOAD) // 2}-", server.requests


def test_partial_file_resumes_on_the_next_call(spec, server):
    server.cut_next = 5
    with pytest.raises(ReleasedWeightsError) as e:
        released.released_weights_path(spec, retries=0)
    part = spec.cache_path().with_name(spec.cache_path().name + ".part")
    assert part.is_file() and 0 < part.stat().st_size < len(PAYLOAD)
    assert "the next call resumes" in str(e.value) and str(spec.cache_path()) in str(e.value)
    server.cut_next = 0
    assert released.released_weights_path(spec, retries=0).read_bytes() == PAYLOAD
    assert server.requests[-1][1] == f"bytes={len(PAYLOAD) // 2}-"


def test_server_without_range_restarts(spec, server):
    server.cut_next, server.range_support = 1, False
    assert released.released_weights_path(spec, retries=1, wait=0).read_bytes() == PAYLOAD


def test_wrong_checksum_is_refused_and_not_cached(spec, server):
    server.files["/models/test_orig/model_best_weights.h5"] = PAYLOAD[:-1] + b"\0"  # same size
    with pytest.raises(ReleasedWeightsError) as e:
        released.released_weights_path(spec, retries=0)
    msg = str(e.value)
    assert "does not match its checksum" in msg and SHA in msg and "not cached" in msg
    target = spec.cache_path()
    assert not target.exists() and not target.with_name(target.name + ".part").exists()


def test_corrupt_cached_file_is_named(spec):
    target = spec.cache_path()
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the file")
    with pytest.raises(ReleasedWeightsError, match="is not the released mlsp-test file"):
        released.released_weights_path(spec)


def test_offline_says_what_to_download_and_where(spec, monkeypatch, tmp_path):
    monkeypatch.setenv(released.BASE_URL_ENV, "http://127.0.0.1:9/models")  # discard port: refused
    with pytest.raises(ReleasedWeightsError) as e:
        released.released_weights_path(spec, retries=1, wait=0)
    msg = str(e.value)
    assert "http://127.0.0.1:9/models/test_orig/model_best_weights.h5" in msg
    assert f"put it at {spec.cache_path()}" in msg and SHA in msg and f"{len(PAYLOAD):,}" in msg
    with pytest.raises(ReleasedWeightsError, match="download is disabled"):
        released.released_weights_path(spec, download=False)


def test_cli_weights_released_offline_is_a_usage_error(monkeypatch, tmp_path, capsys):
    from ku import cli

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv(released.BASE_URL_ENV, "http://127.0.0.1:9/models")
    monkeypatch.setattr(released.time, "sleep", lambda seconds: None)  # no waits between retries
    (tmp_path / "a.jpg").write_bytes(b"")
    rc = cli.main(["predict", str(tmp_path / "a.jpg"), "--model", "mlsp-single3fc", "--head-weights",
                   "released", "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "argument --head-weights" in err and "irnv2_mlsp_narrow_orig/model_best_weights.h5" in err
    assert "0121f3235245df3db37e82fc3e5a84e22aaa731f24b3ffd3ea63d421c2b60102" in err
    rc = cli.main(["predict", str(tmp_path / "a.jpg"), "--model", "mlsp-multi3fc", "--head-weights",
                   "released", "--out", str(tmp_path / "p.csv")])
    assert rc == 2 and "no released weights for --model mlsp-multi3fc" in capsys.readouterr().err


def test_released_head_loads_a_released_layout_file(tmp_path):
    """released_head builds the released architecture and loads a Keras 2 layout file into it
    (the real file's layout is tested in tests/test_heads.py)."""
    import h5py

    from ku.models import heads

    ref = heads.single_3fc()
    rng = np.random.default_rng(3)
    with h5py.File(tmp_path / "w.h5", "w") as f:  # Keras 2 save_weights layout
        layers = [ly for ly in ref.layers if ly.weights]
        f.attrs["layer_names"] = np.array([ly.name.encode() for ly in layers])
        values = []
        for ly in layers:
            g = f.create_group(ly.name)
            names = [f"{ly.name}/{w.name}:0".encode() for w in ly.weights]
            g.attrs["weight_names"] = np.array(names)
            for n, w in zip(names, ly.weights):
                v = rng.normal(0, 0.1, w.shape).astype("float32")
                if "variance" in n.decode():
                    v = np.abs(v) + 0.5
                g.create_dataset(n.decode(), data=v)
                values.append(v)
    head = released.released_head("mlsp-single3fc", path=tmp_path / "w.h5")
    got = [w for ly in head.layers if ly.weights for w in ly.get_weights()]
    assert len(got) == len(values)
    for a, b in zip(got, values):
        np.testing.assert_array_equal(a, b)
