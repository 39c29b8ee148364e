"""The runtime knows what it runs on: every shipped model on XNNPACK here, a model without it is a
failing doctor check and a loud warning, and doctor prints the runtime, XNNPACK and CPU lines."""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
import uuid
from collections.abc import Mapping

import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from replay_fixtures import write_config
from tillface.events import utc_now
from tillface.link.schemas import HealthEvent
from tillface.models import load_manifest
from tillface.system.doctor import Check, _run, check_xnnpack
from tillface.vision.pipeline import FacePipeline
from tillface.vision.runtime import (
    RuntimeReport,
    TfliteModel,
    cpu_features_from_cpuinfo,
    detect_cpu_features,
    interpreter_report,
    log_runtime,
    runtime_health,
    runtime_name,
    xnnpack_summary,
)

MANIFEST = load_manifest()
MODEL_IDS = [m.id for m in MANIFEST.models]


def allocated(model_id: str, **options) -> Interpreter:
    interpreter = Interpreter(model_path=str(MANIFEST.path(model_id)), num_threads=2, **options)
    interpreter.allocate_tensors()
    return interpreter


class Reports:
    """Anything with runtime_reports() is what log_runtime and runtime_health take."""

    def __init__(self, reports: Mapping[str, RuntimeReport]) -> None:
        self._reports = dict(reports)

    def runtime_reports(self) -> Mapping[str, RuntimeReport]:
        return self._reports


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_every_shipped_model_runs_on_xnnpack(model_id):
    report = TfliteModel(MANIFEST.path(model_id)).runtime_report
    assert report.xnnpack, report
    assert 0 < report.xnnpack_nodes <= report.nodes and report.xnnpack_partitions >= 1
    assert report.runtime_name == runtime_name()
    assert report.machine == platform.machine()
    assert report.cpu_features == detect_cpu_features()[0]


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_delegated_node_count_is_the_runtimes_own(model_id):
    """With node fusion off the runtime gives every delegated node its own partition, so the number of
    DELEGATE nodes is its count of the nodes XNNPACK took: the graph walk must find the same number."""
    fused = interpreter_report(allocated(model_id), model_id)
    single = interpreter_report(allocated(model_id, experimental_disable_delegate_node_fusion=True), model_id)
    assert single.xnnpack_partitions == single.xnnpack_nodes == fused.xnnpack_nodes
    assert fused.nodes == single.nodes


def test_the_pipeline_reports_both_of_its_models():
    pipeline = FacePipeline.from_manifest()
    reports = pipeline.runtime_reports()
    assert list(reports) == [pipeline.model_ids["detector"], pipeline.model_ids["embedder"]]
    assert all(r.xnnpack for r in reports.values())
    # BlazeFace is one XNNPACK partition; SFace's int8 MAXIMUM (its PReLU) and PADV2 stay on the
    # built-in kernels, between 29 partitions (ai-edge-litert 2.3.0). A runtime that delegates
    # differently computes different embeddings: this should fail then, and be looked at.
    assert reports["blazeface-short"].xnnpack_use() == "164 of 164 nodes in 1 partition"
    assert reports["sface-2021dec-int8"].xnnpack_use() == "89 of 117 nodes in 29 partitions"
    health = runtime_health(pipeline)
    assert health == {
        "runtime": runtime_name(),
        "xnnpack": True,
        "cpu_features": list(detect_cpu_features()[0]),
    }
    # The fields fit the contract's health payload.
    HealthEvent.model_validate(
        {
            "event_id": str(uuid.uuid4()),
            "ts": utc_now(),
            "store": "s1",
            "till": "t1",
            "version": "1",
            "uptime_s": 1.0,
            "fps": 15.0,
            "camera": "ok",
            "display": "none",
            "link": "connected",
            "gallery_version": 0,
            "gallery_members": 0,
            "gallery_templates": 0,
            "models": list(reports),
            "outbox_depth": 0,
            **health,
        }
    )


def test_a_model_without_xnnpack_is_a_failing_check_and_a_warning(caplog):
    model_id = "sface-2021dec-int8"
    bare = interpreter_report(
        allocated(model_id, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES),
        model_id,
    )
    assert not bare.xnnpack and bare.xnnpack_nodes == 0 and bare.xnnpack_partitions == 0
    assert bare.nodes == 117
    detector = TfliteModel(MANIFEST.path("blazeface-short")).runtime_report
    reports = {"blazeface-short": detector, model_id: bare}

    check = _run("xnnpack", lambda: check_xnnpack(reports))
    assert isinstance(check, Check) and not check.ok
    line = check.line()
    assert line.startswith("FAIL xnnpack")
    assert f"{model_id} runs WITHOUT XNNPACK" in line and "blazeface-short" not in line.split("WITHOUT")[0]
    for words in ("different embeddings", "/proc/cpuinfo", "qemu", "tillface doctor"):
        assert words in line, words

    unit = Reports(reports)
    assert runtime_health(unit)["xnnpack"] is False
    with caplog.at_level(logging.INFO, logger="tillface.test"):
        assert log_runtime(unit, logging.getLogger("tillface.test")) is False
    levels = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in levels] == ["INFO", "WARNING"]
    assert "0 of 117 nodes in 0 partitions" in levels[0][1]
    assert levels[1][1].startswith(f"XNNPACK MISSING: {model_id} runs WITHOUT XNNPACK")
    assert caplog.records[1].journal["TILLFACE_XNNPACK"] is False


def test_log_runtime_is_one_info_line_when_all_is_well(caplog):
    pipeline = FacePipeline.from_manifest()
    with caplog.at_level(logging.INFO, logger="tillface.test"):
        assert log_runtime(pipeline, logging.getLogger("tillface.test")) is True
    assert [r.levelname for r in caplog.records] == ["INFO"]
    message = caplog.records[0].getMessage()
    assert runtime_name() in message and xnnpack_summary(pipeline.runtime_reports()) in message


def test_cpu_features_from_cpuinfo():
    # Raspberry Pi 5 (Cortex-A76) and Pi 4 (Cortex-A72) kernels' Features lines.
    pi5 = (
        "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
    )
    pi5 += "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\n"
    assert cpu_features_from_cpuinfo(pi5) == ("ASIMD", "FPHP", "ASIMDHP", "ASIMDDP")
    assert cpu_features_from_cpuinfo("Features\t: fp asimd evtstrm crc32 cpuid\n") == ("ASIMD",)
    assert cpu_features_from_cpuinfo("processor\t: 0\n") == ()
    # On this machine the kernel's flags line and numpy's detection name the same features.
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        assert cpu_features_from_cpuinfo(f.read()) == detect_cpu_features()[0]
    assert detect_cpu_features()[1] == "numpy"


def test_doctor_prints_the_runtime_xnnpack_and_cpu_lines(tmp_path):
    cfg = write_config(tmp_path / "till.toml", tmp_path / "state", f"replay:{tmp_path / 'no-camera'}")
    out = subprocess.run(
        [sys.executable, "-m", "tillface", "doctor", "--config", str(cfg)], capture_output=True, text=True
    )
    lines = {line.split()[1]: line for line in out.stdout.splitlines()}
    assert lines["runtime"] == f"ok   runtime    {runtime_name()} on {platform.machine()}"
    summary = xnnpack_summary(FacePipeline.from_manifest().runtime_reports())
    assert lines["xnnpack"] == f"ok   xnnpack    XNNPACK: {summary}"
    features = " ".join(detect_cpu_features()[0])
    assert lines["cpu"] == f"ok   cpu        {platform.machine()}: {features} (numpy)"
