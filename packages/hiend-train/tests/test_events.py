"""Event sinks: log.jsonl's records through JsonlSink, fan-out through MultiSink, one more sink added to a
run sees every event of log.jsonl; the progress bar switched off prints nothing."""

from __future__ import annotations

import json
import math

import pytest

from hiend_train import pretrain, runner
from hiend_train.events import EventSink, JsonlSink, MultiSink
from hiend_train.rundir import RunDir


class Recorder:
    """A sink that keeps what it is given (what a TensorBoard sink would receive)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []
        self.closed = 0

    def emit(self, event: str, **fields) -> None:
        self.events.append((event, fields))

    def close(self) -> None:
        self.closed += 1


def test_jsonl_sink_writes_time_event_then_fields_in_order(tmp_path):
    path = tmp_path / "log.jsonl"
    sink = JsonlSink(path)
    sink.emit("step", epoch=1, step=2, lr=0.5, loss=math.nan)
    sink.emit("end", best=None)
    sink.close()
    lines = path.read_text().splitlines()
    first = json.loads(lines[0])
    assert list(first) == ["time", "event", "epoch", "step", "lr", "loss"]
    assert first["event"] == "step" and first["step"] == 2 and math.isnan(first["loss"])
    assert '"loss": NaN' in lines[0]  # NaN stays NaN (allow_nan), as before
    assert json.loads(lines[1])["best"] is None
    JsonlSink(tmp_path / "other.jsonl", enabled=False).emit("start", resume=False)
    assert not (tmp_path / "other.jsonl").exists()  # ranks other than 0 write nothing


def test_multi_sink_fans_out_and_closes_every_sink():
    a, b = Recorder(), Recorder()
    sink = MultiSink(a)
    sink.add(b)
    assert isinstance(sink, EventSink) and isinstance(a, EventSink)
    sink.emit("warning", message="hi")
    assert a.events == b.events == [("warning", {"message": "hi"})]

    class Broken(Recorder):
        def close(self) -> None:
            raise OSError("disk gone")

    c = Recorder()
    with pytest.raises(OSError, match="disk gone"):
        MultiSink(Broken(), c).close()
    assert c.closed == 1  # the one after the failing sink was still closed


def test_an_added_sink_gets_every_event_of_log_jsonl(tiny, monkeypatch):
    extra = Recorder()
    monkeypatch.setattr(runner, "event_sink", lambda cfg, env, run: MultiSink(run.events, extra))
    cfg = tiny("pretrain", epochs=1)
    pretrain.run(cfg)
    log = RunDir(cfg.out).read_log()
    assert [r["event"] for r in log] == ["start", "setup", "step", "step", "step", "epoch", "end"]
    assert [
        (r["event"], {k: v for k, v in r.items() if k not in ("time", "event")}) for r in log
    ] == extra.events
    assert extra.closed == 1


def test_progress_off_prints_nothing_and_on_prints_epoch_lines(tiny, tmp_path, capfd):
    pretrain.run(tiny("pretrain", epochs=1, out=tmp_path / "quiet", progress=False))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    pretrain.run(tiny("pretrain", epochs=1, out=tmp_path / "loud", progress=True))
    out, err = capfd.readouterr()
    assert out == "" and "epoch 1" in err and "loss" in err  # the epoch summary, on stderr
